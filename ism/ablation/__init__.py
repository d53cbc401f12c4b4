"""Ablation specs to plans, the Ray sweep driver, tuning, budgets and adaptive seeds."""
