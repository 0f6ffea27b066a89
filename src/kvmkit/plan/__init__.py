"""`kvmkit plan`: hardware selection by total cost per delivered resource, fleet sizing by MILP, HTML report.

Pure core: inputs (pydantic models), costmodel (one configuration, the reference), space (the configurations
that fit), vectorised (all of them with NumPy), fleet (MILP), sensitivity. Edges: loader (files), cli,
render (tables/CSV), report (HTML). Its benchmark is `kvmkit.benchmarks.plan`.
"""
