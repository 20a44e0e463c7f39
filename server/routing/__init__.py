"""What a model name means and who serves each call.

catalog.py    names, aliases, deployments, prices: the built-in tables and the catalog model type
plan.py       one call's attempts: which deployment now, which next, retries, breakers, budgets
dispatch.py   the Router: a request through its plan to a Completion or a stream of events
observer.py   what a plan tells whoever watches it (the metrics): attempts, retries, fallbacks
"""
