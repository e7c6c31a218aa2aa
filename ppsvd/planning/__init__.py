"""Pure planning: how the work of a run is split, what it costs, and what each rank does.

No torch, no processes, no RunConfig: numbers in, plans and predictions out (ppsvd.planner
applies them to a run's configuration).
"""
