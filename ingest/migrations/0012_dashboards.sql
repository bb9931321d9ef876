-- What Grafana needs besides the pipeline's own tables: the site models as the
-- compute workers run them (lines, which meter serves which asset, product
-- targets are in no other table) and the carriers' units. Same DDL on
-- PostgreSQL and TimescaleDB; the dashboards read the aggregates of 0007
-- (continuous aggregates on TimescaleDB, materialized views on PostgreSQL).
--
-- `site_model` is written by `python -m deploy.grafana sites --config
-- server.toml` (the models compute loads, validated by compute.site) whenever a
-- site model changes; one row per site, replaced whole.
CREATE TABLE IF NOT EXISTS site_model (
    site       text        PRIMARY KEY,
    model      jsonb       NOT NULL,  -- compute.site.SiteModel as JSON
    source     text        NOT NULL,  -- the file it was loaded from
    loaded_at  timestamptz NOT NULL DEFAULT now()
);

-- Canonical units per carrier (compute stores energy in them) and how a rate
-- reading converts to the carrier's rate unit. Mirrors compute.site's
-- CANONICAL_UNIT, RATE_UNIT and RATE_UNITS (a test holds them equal).
CREATE TABLE IF NOT EXISTS carrier_unit (
    carrier     text PRIMARY KEY,
    energy_unit text NOT NULL,
    rate_unit   text NOT NULL
);
INSERT INTO carrier_unit (carrier, energy_unit, rate_unit) VALUES
    ('electricity', 'kWh', 'kW'), ('natural_gas', 'Nm3', 'Nm3/h'),
    ('steam', 't', 't/h'), ('heat', 'GJ', 'GJ/h')
ON CONFLICT (carrier) DO NOTHING;

CREATE TABLE IF NOT EXISTS rate_unit (
    carrier      text             NOT NULL REFERENCES carrier_unit (carrier),
    unit         text             NOT NULL,  -- as the power channel's readings carry it
    to_rate_unit double precision NOT NULL,  -- × this = carrier_unit.rate_unit
    PRIMARY KEY (carrier, unit)
);
INSERT INTO rate_unit (carrier, unit, to_rate_unit) VALUES
    ('electricity', 'W', 1e-3), ('electricity', 'kW', 1), ('electricity', 'MW', 1e3),
    ('natural_gas', 'Nm3/h', 1),
    ('steam', 'kg/h', 1e-3), ('steam', 't/h', 1),
    ('heat', 'kW', 3.6e-3), ('heat', 'MW', 3.6), ('heat', 'GJ/h', 1)
ON CONFLICT (carrier, unit) DO NOTHING;

-- Assets and their production line.
CREATE OR REPLACE VIEW site_asset AS
SELECT s.site, a.key AS asset, a.value ->> 'line' AS line, a.value ->> 'split' AS split
FROM site_model s
CROSS JOIN LATERAL jsonb_each(s.model -> 'assets') AS a;

-- Meters, where they sit and the line they serve: an asset meter its asset's
-- line; a shared or parent meter the line of the assets it serves (a parent
-- with no assets serves all), or '(site)' when those lie on several lines.
-- is_child: a parent's sub-meter (summing it with its parent counts it twice).
CREATE OR REPLACE VIEW site_meter AS
SELECT s.site, m.key AS meter,
       m.value ->> 'carrier' AS carrier,
       m.value ->> 'role' AS role,
       m.value ->> 'asset' AS asset,
       m.value ->> 'channel' AS channel,
       coalesce(m.value ->> 'power_channel', '') AS power_channel,
       (m.value ->> 'rated')::double precision AS rated,
       coalesce(l.line, '(site)') AS line,
       EXISTS (SELECT 1
               FROM jsonb_each(s.model -> 'meters') AS p
               CROSS JOIN LATERAL jsonb_array_elements_text(p.value -> 'children') AS c (child)
               WHERE c.child = m.key) AS is_child,
       m.value ->> 'description' AS description
FROM site_model s
CROSS JOIN LATERAL jsonb_each(s.model -> 'meters') AS m
LEFT JOIN LATERAL (
    SELECT CASE WHEN count(DISTINCT a.value ->> 'line') = 1
                THEN min(a.value ->> 'line') END AS line
    FROM jsonb_each(s.model -> 'assets') AS a
    WHERE a.key = m.value ->> 'asset'
       OR a.key IN (SELECT jsonb_array_elements_text(m.value -> 'assets'))
       OR (m.value ->> 'role' = 'parent' AND jsonb_array_length(m.value -> 'assets') = 0)
) AS l ON true;

-- Products, their PACT declared unit and the intensity target (kgCO2e per
-- declared unit; NULL when the site model sets none).
CREATE OR REPLACE VIEW site_product AS
SELECT s.site, p.key AS product, p.value ->> 'name' AS name,
       p.value ->> 'declared_unit' AS declared_unit,
       (p.value ->> 'mass_per_declared_unit_kg')::double precision AS mass_per_declared_unit_kg,
       (p.value ->> 'target_kgco2e_per_unit')::double precision AS target_kgco2e_per_unit
FROM site_model s
CROSS JOIN LATERAL jsonb_each(s.model -> 'products') AS p;

GRANT SELECT ON site_model, carrier_unit, rate_unit, site_asset, site_meter, site_product
    TO plantprint_reader, plantprint_writer;
GRANT INSERT, UPDATE ON site_model TO plantprint_writer;
