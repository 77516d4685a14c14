"""How an iteration's candidates are scored and one of them chosen."""

from __future__ import annotations

from netadapt.errors import ConfigError
from netadapt.executor import CandidateResult

__all__ = [
    "candidate_score",
    "prescreen_top",
    "select_proposal",
]


def candidate_score(result: CandidateResult, score: str = "accuracy") -> float:
    """A result's holdout score, higher is better: its accuracy, or minus its mean cross-entropy."""
    if score == "accuracy":
        return float(result.holdout_acc)
    if score == "loss":
        return -float(result.holdout_loss)
    raise ConfigError(f"search.score must be 'accuracy' or 'loss', got {score!r}")


def select_proposal(
    results: list[CandidateResult], rule: str, reference: float, current_predicted_ms: float, score: str = "accuracy"
) -> CandidateResult | None:
    """Pick the winner among successful candidates.

    "accuracy": the best holdout score (NetAdapt Alg. 1).
    "accuracy_per_latency": largest dScore / |dLatency| (MobileNetV3 §4.2),
    where dScore is relative to `reference`, the current network's score
    (the search passes its control arm: the current network fine-tuned with
    the same batches, so the reference carries no winner's-curse bias), and
    dLatency is predicted. Ties go to the lower predicted latency, then the
    group name, so the choice never depends on the order results arrived in.

    Args:
        score: "accuracy" (top-1) or "loss" (cross-entropy), see `candidate_score`.
    """
    ok = [r for r in results if r.status == "ok"]
    if not ok:
        return None
    if rule == "accuracy":
        def value(r: CandidateResult) -> float:
            return candidate_score(r, score)
    elif rule == "accuracy_per_latency":
        def value(r: CandidateResult) -> float:
            saved = max(current_predicted_ms - r.task.predicted_ms, 1e-9)
            return (candidate_score(r, score) - reference) / saved
    else:
        raise ConfigError(f"search.selection must be 'accuracy' or 'accuracy_per_latency', got {rule!r}")
    return max(ok, key=lambda r: (value(r), -r.task.predicted_ms, r.task.name))


def prescreen_top(results: list[CandidateResult], count: int, score: str = "accuracy") -> list[str]:
    """The names of the `count` best-scoring successful results (ties: lower predicted latency, then name)."""
    ok = [r for r in results if r.status == "ok"]
    ranked = sorted(ok, key=lambda r: (-candidate_score(r, score), r.task.predicted_ms, r.task.name))
    return [r.task.name for r in ranked[:count]]
