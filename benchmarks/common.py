"""What the benchmarks share: how a figure is checked against its goal."""

from __future__ import annotations

from typing import Any


def is_met(value: float, op: str, goal: float) -> bool:
    return value <= goal if op == "<=" else value >= goal


def goal_lines(summary: dict[str, float], goals: dict[str, tuple[str, float]]) -> list[str]:
    """One line a figure: its value, its goal, and whether it is met."""
    lines = []
    for name, value in summary.items():
        op, goal = goals[name]
        verdict = "met" if is_met(value, op, goal) else "NOT met"
        lines.append(f"   {name:28} {value:10.2f}  (goal {op} {goal:g}: {verdict})")
    return lines


def all_met(result: dict[str, Any]) -> bool:
    return all(is_met(result["summary"][name], *goal) for name, goal in result["goals"].items())
