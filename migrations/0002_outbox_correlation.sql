-- The request an outbox message follows from (the pay request's id), so the relayed message
-- carries it as correlation id and trace id: one id from the HTTP request to every follow-up.
ALTER TABLE outbox ADD COLUMN correlation_id UUID;
