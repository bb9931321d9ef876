"""Grafana for energy managers: dashboards as code, provisioning files and a push.

    python -m deploy.grafana build    # write dashboards/*.json from the Python definitions
    python -m deploy.grafana push     # create or update folder, datasource and dashboards
    python -m deploy.grafana sites --config server.toml   # store the site models for the panels

The dashboards are built with grafana-foundation-sdk (``panels.py`` adds the
PostgreSQL query the SDK has no type for). Their SQL reads the same relations on
both backends: the aggregates of migration 0007 (continuous aggregates on
TimescaleDB, materialized views on PostgreSQL), compute's tables and the site
views of migration 0012, as the ``plantprint_reader`` role.
"""
