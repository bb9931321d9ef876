-- Emission factors: versioned per carrier, region and period, each row with its
-- source, seeded with official figures. compute picks them (compute/factors.py);
-- users add their own (green-electricity certificates, PPAs, supplier-specific
-- figures) with `python -m compute factors add`.
--
-- Append-only: certified footprints name the rows they used, so a row is never
-- changed or removed. A correction is a new row whose `supersedes` names the old
-- one. The writer role may only INSERT; a trigger refuses UPDATE, DELETE and
-- TRUNCATE to every role, the owner included.
--
-- Columns:
--   carrier      electricity | natural_gas | steam | heat (compute's carriers)
--   region       CN (national), CN-North … (regional grids), CN-SX … (ISO 3166-2
--                provinces), or a site id for a site's own contractual factor
--   period_*     the period the figure describes, both days inclusive (a data
--                year: 2023-01-01 .. 2023-12-31); 9999-12-31 = open-ended default
--   value, unit  kgCO2/<canonical unit> or kgCO2e/<canonical unit>: kWh, Nm3, t, GJ
--   kind         location | market | life_cycle (GHG Protocol dual reporting,
--                plus the life-cycle electricity carbon-footprint factor)
--   variant      average (grid average), residual_mix (excluding market-traded
--                non-fossil electricity), fossil (fossil-fired generation: for
--                reduction baselines, never used for consumption), default
--                (guideline default), contract (certificate, PPA), supplier
--   gas_basis    CO2 (carbon dioxide only) | CO2e (all greenhouse gases, GWP-weighted)
--   valid_*      accounting dates the row may be used for (valid_to NULL = open)
--   note         what is assumed or not confirmed
-- Same DDL on PostgreSQL and TimescaleDB (a small plain table); no COPY.

CREATE TABLE IF NOT EXISTS emission_factor (
    id           integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    carrier      text             NOT NULL CHECK (carrier ~ '^[a-z_]+$'),
    region       text             NOT NULL CHECK (region <> ''),
    period_start date             NOT NULL,
    period_end   date             NOT NULL,
    value        double precision NOT NULL CHECK (value >= 0 AND value < 'Infinity'),
    unit         text             NOT NULL CHECK (unit ~ '^kgCO2e?/[A-Za-z0-9]+$'),
    kind         text             NOT NULL
                 CHECK (kind IN ('location', 'market', 'life_cycle')),
    variant      text             NOT NULL CHECK (variant IN
                 ('average', 'residual_mix', 'fossil', 'default', 'contract', 'supplier')),
    gas_basis    text             NOT NULL CHECK (gas_basis IN ('CO2', 'CO2e')),
    source       text             NOT NULL CHECK (source <> ''),
    publication  text             NOT NULL CHECK (publication <> ''),
    valid_from   date             NOT NULL,
    valid_to     date,
    note         text,
    supersedes   integer          REFERENCES emission_factor (id),
    added_by     text             NOT NULL DEFAULT 'user' CHECK (added_by IN ('seed', 'user')),
    added_at     timestamptz      NOT NULL DEFAULT now(),
    CHECK (period_end >= period_start),
    CHECK (valid_to IS NULL OR valid_to >= valid_from),
    CHECK (unit LIKE 'kg' || gas_basis || '/%')
);
CREATE INDEX IF NOT EXISTS emission_factor_lookup
    ON emission_factor (carrier, kind, region, period_start);

CREATE OR REPLACE FUNCTION emission_factor_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'emission_factor is append-only (%): add a row that supersedes the old one',
        TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;
DROP TRIGGER IF EXISTS emission_factor_no_change ON emission_factor;
CREATE TRIGGER emission_factor_no_change BEFORE UPDATE OR DELETE ON emission_factor
    FOR EACH ROW EXECUTE FUNCTION emission_factor_append_only();
DROP TRIGGER IF EXISTS emission_factor_no_truncate ON emission_factor;
CREATE TRIGGER emission_factor_no_truncate BEFORE TRUNCATE ON emission_factor
    FOR EACH STATEMENT EXECUTE FUNCTION emission_factor_append_only();

GRANT SELECT ON emission_factor TO plantprint_reader, plantprint_writer;
GRANT INSERT ON emission_factor TO plantprint_writer;

-- --- seed: electricity, MEE/NBS (生态环境部、国家统计局), kgCO2/kWh ------------------
-- Figures as published by MEE and NBS for data years 2021-2023. The announcements'
-- document numbers are cited as far as known here; where not confirmed, the note says so.

INSERT INTO emission_factor
    (carrier, region, period_start, period_end, value, unit, kind, variant, gas_basis,
     source, publication, valid_from, note, added_by)
SELECT 'electricity', v.region, make_date(v.year, 1, 1), make_date(v.year, 12, 31), v.value,
       'kgCO2/kWh', v.kind, v.variant, 'CO2',
       '生态环境部、国家统计局 (MEE, NBS): ' || v.year || '年电力二氧化碳排放因子 '
           || '(electricity CO2 emission factors for ' || v.year || ')',
       v.publication, make_date(v.year, 1, 1),
       'document number not confirmed from the announcement text here', 'seed'
FROM (VALUES
    -- data year 2021: MEE/NBS announcement published 2024 (公告 2024年第12号 as recalled)
    (2021, 'CN', 0.5568, 'location', 'average',
     'MEE/NBS announcement of the 2021 factors (2024; 公告 2024年第12号 as recalled): '
     || '全国电力平均二氧化碳排放因子 (national average)'),
    (2021, 'CN', 0.8426, 'location', 'fossil',
     'MEE/NBS announcement of the 2021 factors (2024; 公告 2024年第12号 as recalled): '
     || '全国化石能源电力二氧化碳排放因子 (fossil-fired generation)'),
    -- data year 2022
    (2022, 'CN', 0.5366, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 全国电力平均二氧化碳排放因子 (national average)'),
    (2022, 'CN', 0.5856, 'market', 'residual_mix',
     'MEE/NBS announcement of the 2022 factors: 全国电力平均二氧化碳排放因子'
     || '（不包括市场化交易的非化石能源电量） (national, excluding market-traded non-fossil)'),
    (2022, 'CN', 0.8325, 'location', 'fossil',
     'MEE/NBS announcement of the 2022 factors: 全国化石能源电力二氧化碳排放因子 (fossil-fired)'),
    (2022, 'CN-North', 0.6776, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 华北 (North China)'),
    (2022, 'CN-Northeast', 0.5564, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 东北 (Northeast)'),
    (2022, 'CN-East', 0.5617, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 华东 (East China)'),
    (2022, 'CN-Central', 0.5395, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 华中 (Central China)'),
    (2022, 'CN-Northwest', 0.5857, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 西北 (Northwest)'),
    (2022, 'CN-South', 0.3869, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 南方 (China Southern)'),
    (2022, 'CN-Southwest', 0.2268, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 区域电力平均二氧化碳排放因子, 西南 (Southwest)'),
    (2022, 'CN-SX', 0.7096, 'location', 'average',
     'MEE/NBS announcement of the 2022 factors: 省级电力平均二氧化碳排放因子, 山西 (Shanxi)'),
    -- data year 2023
    (2023, 'CN', 0.5306, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 全国电力平均二氧化碳排放因子 (national average)'),
    (2023, 'CN', 0.6096, 'market', 'residual_mix',
     'MEE/NBS announcement of the 2023 factors: 全国电力平均二氧化碳排放因子'
     || '（不包括市场化交易的非化石能源电量） (national, excluding market-traded non-fossil)'),
    (2023, 'CN', 0.8273, 'location', 'fossil',
     'MEE/NBS announcement of the 2023 factors: 全国化石能源电力二氧化碳排放因子 (fossil-fired)'),
    (2023, 'CN-North', 0.6361, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 华北 (North China)'),
    (2023, 'CN-Northeast', 0.5122, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 东北 (Northeast)'),
    (2023, 'CN-East', 0.5500, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 华东 (East China)'),
    (2023, 'CN-Central', 0.5271, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 华中 (Central China)'),
    (2023, 'CN-Northwest', 0.5543, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 西北 (Northwest)'),
    (2023, 'CN-South', 0.4042, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 南方 (China Southern)'),
    (2023, 'CN-Southwest', 0.2472, 'location', 'average',
     'MEE/NBS announcement of the 2023 factors: 区域电力平均二氧化碳排放因子, 西南 (Southwest)')
) AS v (year, region, value, kind, variant, publication)
WHERE NOT EXISTS (SELECT 1 FROM emission_factor WHERE added_by = 'seed');

-- --- seed: life-cycle electricity carbon-footprint factor, MEE/NBS/NEA, kgCO2e/kWh ----
-- 电力碳足迹因子: cradle-to-grave of 1 kWh delivered, all greenhouse gases; the
-- factor for product carbon footprints (GB/T 24067 / ISO 14067) rather than for
-- enterprise GHG inventories.

INSERT INTO emission_factor
    (carrier, region, period_start, period_end, value, unit, kind, variant, gas_basis,
     source, publication, valid_from, note, added_by)
SELECT 'electricity', 'CN', make_date(v.year, 1, 1), make_date(v.year, 12, 31), v.value,
       'kgCO2e/kWh', 'life_cycle', 'average', 'CO2e',
       '生态环境部、国家统计局、国家能源局 (MEE, NBS, NEA): ' || v.year || '年电力碳足迹因子 '
           || '(electricity carbon-footprint factor for ' || v.year || ')',
       'MEE/NBS/NEA announcement of the ' || v.year || ' electricity carbon-footprint factor '
           || '(national); document number not confirmed here',
       make_date(v.year, 1, 1),
       'life-cycle, CO2e; document number not confirmed from the announcement text here', 'seed'
FROM (VALUES (2023, 0.6205), (2024, 0.5777)) AS v (year, value)
WHERE NOT EXISTS (SELECT 1 FROM emission_factor WHERE added_by = 'seed' AND kind = 'life_cycle');

-- --- seed: natural gas, purchased heat and steam, national GHG accounting guidelines ------
-- 国家发展改革委办公厅 (NDRC General Office): 《中国水泥生产企业温室气体排放核算方法与报告
-- 指南（试行）》 (发改办气候〔2013〕2526号) and 《工业其他行业企业温室气体排放核算方法与报告
-- 指南（试行）》 (发改办气候〔2015〕1722号). Open-ended defaults, not data years.
--
-- Natural gas, combustion CO2 = NCV × carbon content × oxidation rate × 44/12:
--   389.31 GJ/10^4 Nm3 × 15.32 tC/TJ × 99 % × 44/12 = 2.16502 kgCO2/Nm3 (21.650 tCO2/10^4 Nm3)
-- Purchased heat: 0.11 tCO2/GJ = 110 kgCO2/GJ.
-- Purchased steam, t → GJ by the guidelines' formula heat = t × (h − 83.74 kJ/kg) × 10^-3
-- (83.74 kJ/kg: water at 20 °C), h the steam's enthalpy from its measured pressure and
-- temperature. ASSUMED here: saturated steam at 1.0 MPa (abs), h = 2777.1 kJ/kg →
-- 2.69336 GJ/t × 110 kgCO2/GJ = 296.27 kgCO2/t.

INSERT INTO emission_factor
    (carrier, region, period_start, period_end, value, unit, kind, variant, gas_basis,
     source, publication, valid_from, note, added_by)
SELECT v.carrier, 'CN', DATE '2013-01-01', DATE '9999-12-31', v.value, v.unit,
       'location', 'default', 'CO2',
       '国家发展改革委办公厅 (NDRC): 《中国水泥生产企业温室气体排放核算方法与报告指南（试行）》 '
           || '(发改办气候〔2013〕2526号); 《工业其他行业企业温室气体排放核算方法与报告指南（试行）》 '
           || '(发改办气候〔2015〕1722号)',
       v.publication, DATE '2013-01-01', v.note, 'seed'
FROM (VALUES
    ('natural_gas', 389.31e-4 * 15.32e-3 * 0.99 * 44.0 / 12.0 * 1000.0, 'kgCO2/Nm3',
     'appendix, default parameters of common fossil fuels (常用化石燃料相关参数缺省值), '
     || 'natural gas: NCV 389.31 GJ/10^4 Nm3, carbon content 15.32 tC/TJ, oxidation rate 99 %; '
     || 'CO2 = NCV × CC × OF × 44/12 = 2.16502 kgCO2/Nm3',
     'computed from the tabulated parameters; combustion CO2 only (CH4 and N2O not included). '
     || 'Some guideline editions tabulate 15.3 tC/TJ (2.16221 kgCO2/Nm3): the 15.32 value is '
     || 'not confirmed from the guideline text here'),
    ('heat', 110.0, 'kgCO2/GJ',
     'section on CO2 of purchased electricity and heat (净购入电力和热力): heat supply '
     || 'emission factor 0.11 tCO2/GJ, to be updated when the authorities publish official data',
     'the guidelines'' provisional default; use the supplier''s figure where known'),
    ('steam', (2777.1 - 83.74) * 1e-3 * 110.0, 'kgCO2/t',
     'heat supply factor 0.11 tCO2/GJ; steam mass to heat by the guidelines'' steam formula '
     || 'heat = t × (enthalpy − 83.74 kJ/kg) × 10^-3 GJ',
     'ASSUMPTION: saturated steam at 1.0 MPa (abs), enthalpy 2777.1 kJ/kg → 2.69336 GJ/t, '
     || '296.27 kgCO2/t. The real conversion depends on the steam''s pressure and temperature: '
     || 'add a row from the measured conditions or the supplier. The formula is cited from '
     || 'memory, not confirmed from the guideline text here')
) AS v (carrier, value, unit, publication, note)
WHERE NOT EXISTS (SELECT 1 FROM emission_factor WHERE added_by = 'seed' AND variant = 'default');
