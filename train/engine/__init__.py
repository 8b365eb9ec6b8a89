"""The training engine and what it stands on: the settings reader (``config``), checkpoints,
the process group (``distributed``), the run-directory lock and the ``Trainer`` that runs any
``Task``. Nothing here knows a data set or a model family."""
