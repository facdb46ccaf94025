"""The trainable-parameter budget rule of Table 5 (paper §7.1).

The paper fixes a budget of trainable LoRA parameters (18M for GPT-3 175B) and spreads it over the
adapted weight types: r = 8 for one type, 4 for two, 2 for all four. For a weight W of shape
(d_out, d_in), a rank-r adapter has r·(d_in + d_out) parameters (A: r×d_in, B: d_out×r). Our rule
generalises that to non-square matrices (e.g. SmolLM2's Wk, Wv are 576→192):

    r = max{ r ∈ ℕ : r · Σ_W (d_in + d_out) ≤ budget },

the sum running over every adapted matrix. ``budget="auto"`` is the paper's convention: the count
of r = 8 on Wq alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from lora_repro.errors import LoraReproError

AUTO_RANK = 8  # budget=auto: the parameter count of r=8 on Wq alone (paper Table 5)


class BudgetError(LoraReproError, ValueError):
    """A budget that cannot give rank ≥ 1, or a malformed budget value."""


def params_per_rank(shapes: Iterable[tuple[int, int]]) -> int:
    """Σ (d_in + d_out) over matrices: the trainable LoRA parameters that one unit of rank costs.

    Args:
        shapes: (d_out, d_in) = (d, k) per adapted matrix.
    """
    return int(sum(int(d) + int(k) for d, k in shapes))


def lora_param_count(shapes: Iterable[tuple[int, int]], r: int) -> int:
    """Trainable LoRA parameters r·Σ(d + k) (paper §4.2: |Θ| = 2·L̂·d_model·r for square W)."""
    return int(r) * params_per_rank(shapes)


def auto_budget(q_shapes: Sequence[tuple[int, int]], r: int = AUTO_RANK) -> int:
    """The paper's budget: r = 8 on Wq alone in every adapted layer (Table 5's 18M for GPT-3).

    Args:
        q_shapes: (d, k) of every Wq that would be adapted.
        r: the reference rank (8 in the paper).
    """
    if not q_shapes:
        raise BudgetError("budget=auto needs the model's Wq shapes; none were found")
    return lora_param_count(q_shapes, r)


def rank_for_budget(shapes: Sequence[tuple[int, int]], budget: int) -> int:
    """Largest r with r·Σ(d_in + d_out) ≤ budget (Table 5's rule).

    Args:
        shapes: (d, k) of every matrix to adapt (all types, all layers).
        budget: trainable LoRA parameters allowed (an int ≥ 1).

    Returns:
        The rank r ≥ 1.

    Raises:
        BudgetError: when the budget is not a positive integer, when ``shapes`` is empty, or when
            it gives r < 1 (the message states the minimum budget).
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise BudgetError(f"adapter.budget must be a positive integer or 'auto', got {budget!r}")
    per_rank = params_per_rank(shapes)
    if per_rank == 0:
        raise BudgetError("no matrices to adapt, so no rank can be derived from a budget")
    r = budget // per_rank
    if r < 1:
        raise BudgetError(
            f"adapter.budget={budget} is too small: rank 1 on these {len(shapes)} matrices already "
            f"needs {per_rank} parameters; set adapter.budget >= {per_rank} (or 'auto')"
        )
    return r


def resolve_budget(
    budget: int | str | None,
    shapes: Sequence[tuple[int, int]],
    q_shapes: Sequence[tuple[int, int]],
) -> tuple[int | None, int | None]:
    """Turn ``adapter.budget`` into ``(budget, r)``; ``(None, None)`` when no budget is set.

    Args:
        budget: ``None`` (use ``adapter.r``), ``"auto"``, or a positive integer.
        shapes: (d, k) of every matrix to adapt.
        q_shapes: (d, k) of every Wq in the adapted layers (for ``"auto"``).

    Raises:
        BudgetError: see :func:`rank_for_budget`; also for a string other than ``"auto"``.
    """
    if budget is None:
        return None, None
    if isinstance(budget, str):
        if budget.strip().lower() != "auto":
            try:
                budget = int(budget)
            except ValueError:
                raise BudgetError(
                    f"adapter.budget must be a positive integer or 'auto', got {budget!r}"
                ) from None
        else:
            budget = auto_budget(q_shapes)
    # validate before any int(): int(1.5e6) or int(True) would silently accept a non-integer
    r = rank_for_budget(shapes, budget)
    return budget, r
