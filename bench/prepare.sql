-- Seeds orders for bench/payment.sql in a database the benchmark prepared (users and goods
-- exist): `payctl bench --pgbench` runs it, or by hand after `payctl bench --keep`:
--   psql -d postgres://postgres@127.0.0.1:5432/payfleet_bench -f bench/prepare.sql
--   pgbench -n -c 64 -j 2 -T 15 -f bench/payment.sql postgres://postgres@127.0.0.1:5432/payfleet_bench
-- A re-run first removes what the previous pgbench run wrote.

DELETE FROM outbox WHERE payload->>'order_no' LIKE 'PGB%';
DELETE FROM profit_pay WHERE order_no LIKE 'PGB%';
DELETE FROM asset_ledger WHERE order_no LIKE 'PGB%';
UPDATE users u SET integral = u.integral + spent.points
  FROM (SELECT user_id, sum(asset_amount) AS points FROM payments WHERE order_no LIKE 'PGB%' GROUP BY user_id) spent
  WHERE u.id = spent.user_id;
DELETE FROM payments WHERE order_no LIKE 'PGB%';
DELETE FROM orders WHERE order_no LIKE 'PGB%';

DROP SEQUENCE IF EXISTS pgbench_pick;
CREATE SEQUENCE pgbench_pick;

-- Enough fresh orders for ~60 s at a few thousand payments per second, spread over the users.
INSERT INTO orders (order_no, user_id, goods_id, kind, num, amount, expires_at)
SELECT 'PGB' || lpad(n::text, 10, '0'), us.ids[1 + n % array_length(us.ids, 1)], g.id, g.kind, 1, g.price,
       now() + interval '1 hour'
FROM generate_series(1, 300000) AS n,
     (SELECT array_agg(id ORDER BY id) AS ids FROM users) AS us,
     (SELECT id, kind, price FROM goods ORDER BY id LIMIT 1) AS g;
ANALYZE orders;
