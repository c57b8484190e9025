-- The prizes of lottery goods, the draws of paid orders, and the follow-up record that makes
-- each paid order's follow-up happen once.
--
-- An ichiban (一番赏) box holds a fixed number of each prize, and a draw takes one out: the
-- database refuses a remaining count below zero, so no prize is issued more often than the box
-- held it, whatever runs at once. An infinite (无限赏) pool has weights instead and never runs out.

CREATE TABLE prizes (
    id         BIGSERIAL PRIMARY KEY,
    goods_id   BIGINT NOT NULL REFERENCES goods (id),
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- ichiban: how many the box held, and how many are left in it
    quantity   INTEGER CHECK (quantity > 0),
    remaining  INTEGER CHECK (remaining >= 0 AND remaining <= quantity),
    -- infinite: the prize's weight among the pool's (its chance is weight / sum of weights)
    weight     INTEGER CHECK (weight > 0),
    CHECK ((quantity IS NULL) = (remaining IS NULL)),
    CHECK ((quantity IS NULL) <> (weight IS NULL)),
    UNIQUE (goods_id, name)
);

-- One row per paid order whose follow-up is done: its primary key is what makes a follow-up
-- happen once however often its event arrives, even to two workers at the same time.
CREATE TABLE followups (
    order_no  TEXT PRIMARY KEY REFERENCES orders (order_no),
    -- SERVED: drawn, credited or shipped; REFUNDED: it could not be served and its money went
    -- back (refund_no); SKIPPED: refunded in full before it was served
    outcome   TEXT NOT NULL CHECK (outcome IN ('SERVED', 'REFUNDED', 'SKIPPED')),
    refund_no TEXT REFERENCES refunds (refund_no),
    detail    TEXT NOT NULL DEFAULT '',
    done_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((outcome = 'REFUNDED') = (refund_no IS NOT NULL))
);

-- The draws of an order, by position (1 … num).
CREATE TABLE draws (
    id        BIGSERIAL PRIMARY KEY,
    order_no  TEXT NOT NULL REFERENCES followups (order_no),
    position  INTEGER NOT NULL CHECK (position >= 1),
    prize_id  BIGINT NOT NULL REFERENCES prizes (id),
    drawn_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (order_no, position)
);
CREATE INDEX draws_prize_idx ON draws (prize_id);
