"""What the jobs train and evaluate, each in the engine's ``Task`` form or as the setup a job
builds it from: image classification, the masked autoencoder, video classification and the
video multi-task heads, and the test-split reports."""
