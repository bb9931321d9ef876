-- PACT API (python -m compute serve): its own role, and the events it receives.
--
-- plantprint_pact is a NOLOGIN group role for the API's login: it reads what
-- plantprint_reader reads (footprints, factors, allocations, intervals) and may
-- only INSERT into pact_event. It cannot change a footprint. Production:
--     CREATE ROLE pact_api LOGIN PASSWORD '...' IN ROLE plantprint_pact;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'plantprint_pact') THEN
        CREATE ROLE plantprint_pact NOLOGIN IN ROLE plantprint_reader;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created concurrently by a migration of another database in the cluster
END
$$;
GRANT USAGE ON SCHEMA public TO plantprint_pact;

-- CloudEvents posted to /3/events by data recipients (RequestCreatedEvent: a
-- request for footprints the data owner answers) and by data owners
-- (PublishedEvent, RequestFulfilledEvent, RequestRejectedEvent), kept whole as
-- received, after validation against the v3 schemas. (source, event_id) is the
-- CloudEvents identity: a re-sent event is kept once.
CREATE TABLE IF NOT EXISTS pact_event (
    source       text        NOT NULL,
    event_id     text        NOT NULL,
    type         text        NOT NULL,
    client_id    text        NOT NULL,  -- the authenticated API client that posted it
    event_time   timestamptz,
    body         jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);

GRANT SELECT, INSERT ON pact_event TO plantprint_pact;
GRANT SELECT ON pact_event TO plantprint_reader, plantprint_writer;
