"""The NetAdapt search (Yang et al., ECCV 2018, Algorithm 1).

    while measured latency > budget:
        target = predicted(current) - dR_i             # dR_i: geometric schedule
        for each prunable group:
            width = largest width whose LUT prediction meets target (else skip)
            cut by filter L2 norm, short-term fine-tune, holdout accuracy
        keep the best proposal, measure its whole-model latency on the target
    optionally long-term fine-tune the final network

The width choice compares LUT predictions with a target derived from the
LUT prediction of the current network, so both sides carry the same model
error; the stop test uses the whole-model latency measured on the target.

The parts, one module each: `schedule` (targets, reductions, width choice),
`selection` (scores, the selection rules, the prescreen), `budget` (whole
measurements beside the base and the stop test) and `loop` (`run_search` and
`SearchLoop`, whose methods are the iteration's steps).
"""

from netadapt.search.budget import BudgetTest, WholeFigures, budget_test, measure_whole, resolve_budget
from netadapt.search.loop import SearchLoop, SearchResult, run_search, validate_search_config
from netadapt.search.schedule import (
    IterationPlan,
    allowed_widths,
    choose_width,
    latency_reduction,
    plan_iteration,
    search_floor,
)
from netadapt.search.selection import candidate_score, prescreen_top, select_proposal

__all__ = [
    "BudgetTest",
    "IterationPlan",
    "SearchLoop",
    "SearchResult",
    "WholeFigures",
    "allowed_widths",
    "budget_test",
    "candidate_score",
    "choose_width",
    "latency_reduction",
    "measure_whole",
    "plan_iteration",
    "prescreen_top",
    "resolve_budget",
    "run_search",
    "search_floor",
    "select_proposal",
    "validate_search_config",
]
