from edgeprune.planner.plan import Plan, make_plan

__all__ = ["Plan", "make_plan"]
