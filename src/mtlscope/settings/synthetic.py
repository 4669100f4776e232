"""``synthetic``: teacher-student tasks with controlled relatedness and noise.

Inputs are standard normal vectors ``x ~ N(0, I_dim)``. Task k has a unit teacher vector ``w_k``; the
teachers have pairwise cosine exactly ``relatedness`` (their Gram matrix is
``(1 - r) I + r 11^T``, realized on orthonormal directions), which must lie in ``[-1/(K-1), 1]``.

- regression: ``y = w_k . x + noise * eps``, loss MSE (the Fisher probe uses the empirical Fisher), metrics mae
  and r2 (primary);
- classification: ``y = 1[w_k . x + noise * eps > 0]``, two classes, cross-entropy, metrics accuracy (primary)
  and macro-F1.

``layout='multi-input'`` draws separate inputs per task; ``layout='shared-input'`` one set of inputs
with K labels. All draws come from ``seed``. Relatedness is the knob of gradient-conflict studies
(Mueller et al. TMLR 2025, §5): anti-correlated teachers give conflicting task gradients.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from mtlscope.losses import cross_entropy, mse
from mtlscope.metrics import accuracy, macro_f1, mae, r2
from mtlscope.options import NonNegativeFloat, NonNegativeInt, PositiveInt
from mtlscope.settings.constructors import TaskSpec, from_arrays
from mtlscope.settings.registry import register
from mtlscope.settings.setting import LAYOUTS, Setting


def teacher_vectors(num_tasks: int, dim: int, relatedness: float, rng: np.random.Generator) -> np.ndarray:
    """``num_tasks`` unit vectors in ``R^dim`` with pairwise cosine exactly ``relatedness``."""
    if num_tasks > dim:
        raise ValueError(f"synthetic option dim must be >= num_tasks ({num_tasks}), got {dim}")
    lower = -1.0 / (num_tasks - 1) if num_tasks > 1 else -1.0
    if not lower - 1e-12 <= relatedness <= 1.0:
        raise ValueError(
            f"synthetic option relatedness must be in [{lower:.3g}, 1] for {num_tasks} tasks, got {relatedness}"
        )
    gram = (1.0 - relatedness) * np.eye(num_tasks) + relatedness * np.ones((num_tasks, num_tasks))
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    root = eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))  # gram = root @ root.T
    basis, _ = np.linalg.qr(rng.standard_normal((dim, num_tasks)))  # orthonormal columns
    teachers: np.ndarray = root @ basis.T
    return teachers


@register("synthetic", "teacher-student tasks with a relatedness (teacher cosine) and a noise knob")
def synthetic(
    *,
    num_tasks: PositiveInt = 2,
    task_type: Literal["regression", "classification"] = "regression",
    layout: Literal["multi-input", "shared-input"] = "multi-input",
    dim: PositiveInt = 16,
    train_size: PositiveInt = 512,
    val_size: PositiveInt = 256,
    test_size: PositiveInt = 256,
    relatedness: Annotated[float, Field(ge=-1, le=1)] = 0.5,
    noise: NonNegativeFloat = 0.1,
    seed: NonNegativeInt = 0,
) -> Setting:
    if task_type not in ("regression", "classification"):
        raise ValueError(f"synthetic option task_type must be 'regression' or 'classification', got {task_type!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"synthetic option layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    for option, value in (
        ("num_tasks", num_tasks),
        ("dim", dim),
        ("train_size", train_size),
        ("val_size", val_size),
        ("test_size", test_size),
    ):
        if value < 1:
            raise ValueError(f"synthetic option {option} must be >= 1, got {value}")
    if noise < 0:
        raise ValueError(f"synthetic option noise must be >= 0, got {noise}")
    rng = np.random.default_rng(seed)
    teachers = teacher_vectors(num_tasks, dim, relatedness, rng)
    sizes = {"train": train_size, "val": val_size, "test": test_size}

    def draw_inputs() -> dict[str, np.ndarray]:
        return {split: rng.standard_normal((n, dim)).astype(np.float32) for split, n in sizes.items()}

    def label(inputs: np.ndarray, teacher: np.ndarray) -> np.ndarray:
        signal = inputs @ teacher + noise * rng.standard_normal(len(inputs))
        if task_type == "regression":
            return signal.astype(np.float32)
        return (signal > 0).astype(np.int64)

    components: dict[str, Any] = (
        # the empirical Fisher, as for every regression task before losses declared their labels
        {"loss": mse(fisher="empirical"), "metrics": (mae(), r2()), "primary_metric": "r2"}
        if task_type == "regression"
        else {"loss": cross_entropy(), "metrics": (accuracy(), macro_f1())}
    )
    shared = draw_inputs()  # drawn in both layouts: the draws that follow stay those of every earlier version
    names = [f"task{k}" for k in range(num_tasks)]
    per_task: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for k, name in enumerate(names):
        inputs = draw_inputs() if layout == "multi-input" else shared
        per_task[name] = {split: (inputs[split], label(inputs[split], teachers[k])) for split in sizes}
    data: dict[str, Any] = (
        per_task
        if layout == "multi-input"
        else {split: (shared[split], {name: per_task[name][split][1] for name in names}) for split in sizes}
    )
    tasks = [
        TaskSpec(name, 1 if task_type == "regression" else 2, **components, description=f"teacher {k} ({task_type})")
        for k, name in enumerate(names)
    ]
    return from_arrays(
        "synthetic",
        tasks,
        data,
        layout="multi-input" if layout == "multi-input" else "shared-input",
        default_model={"encoder": {"name": "mlp", "hidden": [64, 64]}, "head": {"name": "linear"}},
        description="teacher-student tasks with controlled relatedness and noise",
        reference="Mueller, Dredze, Andrews. TMLR 2025 (conflict studies, §5)",
        options={
            "num_tasks": num_tasks,
            "task_type": task_type,
            "layout": layout,
            "dim": dim,
            "train_size": train_size,
            "val_size": val_size,
            "test_size": test_size,
            "relatedness": relatedness,
            "noise": noise,
            "seed": seed,
        },
    )
