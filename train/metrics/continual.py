"""The metrics of a class-incremental run, from its accuracy matrix R (R[i][j]: accuracy on task
j's test set after learning task i, for j <= i), and its heat map."""

from .figures import new_figure

AccuracyMatrix = list[list[float]]  # row i: tasks 0 … i


def average_accuracy(matrix: AccuracyMatrix, after: int = -1) -> float:
    """Mean accuracy over the tasks seen, after task ``after`` (default: the last learned)."""
    row = matrix[after]
    return sum(row) / len(row)


def average_incremental_accuracy(matrix: AccuracyMatrix) -> float:
    """The average accuracy after each task, averaged over the tasks (iCaRL's and PyCIL's)."""
    return sum(average_accuracy(matrix, i) for i in range(len(matrix))) / len(matrix)


def forgetting(matrix: AccuracyMatrix) -> float:
    """Average forgetting (Chaudhry et al. 2018): for each task but the last, its best accuracy
    before the final one minus its final accuracy, averaged (0 after one task)."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    drops = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    return sum(drops) / last


def backward_transfer(matrix: AccuracyMatrix) -> float:
    """BWT (Lopez-Paz & Ranzato 2017): the mean change, from just after it was learned to the
    end, of each task's accuracy but the last's (negative: forgetting; 0 after one task)."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return sum(matrix[last][j] - matrix[j][j] for j in range(last)) / last


def summary(matrix: AccuracyMatrix) -> dict[str, float]:
    return {
        "average_accuracy": average_accuracy(matrix),
        "average_incremental_accuracy": average_incremental_accuracy(matrix),
        "forgetting": forgetting(matrix),
        "bwt": backward_transfer(matrix),
    }


def plot_accuracy_matrix(matrix: AccuracyMatrix, title: str, path) -> None:
    """The matrix as a heat map (rows: after task i; columns: accuracy on task j), numbers in."""
    n = len(matrix)
    grid = [[row[j] if j < len(row) else float("nan") for j in range(n)] for row in matrix]
    fig = new_figure(1.1 * n + 1.8, 0.9 * n + 1.2)
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            colour = "black" if value > 0.6 else "white"
            ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", color=colour)
    labels = [str(t + 1) for t in range(n)]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(len(matrix)), labels[: len(matrix)])
    ax.set_xlabel("accuracy on task")
    ax.set_ylabel("after learning task")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
