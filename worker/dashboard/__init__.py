"""The dashboard: a JSON API under /api/v1 and a web UI over the task table, authorised by Kubernetes RBAC.

Only imported by `kubetasks dashboard` and `kubetasks dev`, so workers never load the web stack
(install it with the `dashboard` extra).
"""
