-- The pay-worker's SQL for ONE integral payment per transaction (src/store/payments.rs with a
-- batch of one), for pgbench: the bare-database baseline the fleet's throughput is compared to.
-- Seven round trips, as the worker: BEGIN, lock the order (store::orders::lock), lock the user,
-- draw the pay number, the write statement, the order-paid event (store::outbox::enqueue_all),
-- COMMIT. (The worker's seventh, who paid an
-- already-paid order, never runs here: every order is fresh.) Seed orders first with
-- bench/prepare.sql; see there for the commands.

BEGIN;
WITH pick AS MATERIALIZED (SELECT 'PGB' || lpad(nextval('pgbench_pick')::text, 10, '0') AS order_no)
SELECT o.order_no, o.user_id, o.goods_id, o.kind, o.num, o.amount, o.status, o.pay_no, o.paying_pay_no,
       o.expires_at, o.expires_at <= now() AS expired, now() AS now
FROM pick JOIN orders o ON o.order_no = pick.order_no
ORDER BY o.order_no
FOR UPDATE OF o \gset
SELECT id, money, integral, money2, pay_password_hash FROM users
WHERE id = ANY(ARRAY[:user_id]::bigint[]) ORDER BY id FOR UPDATE \gset u_
SELECT nextval('pay_no_seq') AS seq FROM generate_series(1, 1) \gset
WITH d AS (
    SELECT * FROM unnest(ARRAY[:user_id]::bigint[], ARRAY[0]::numeric[], ARRAY[10.00]::numeric[], ARRAY[0]::numeric[])
      AS d(id, money, integral, money2)
), u AS (
    UPDATE users SET money = users.money - d.money,
                     integral = users.integral - d.integral,
                     money2 = users.money2 - d.money2
    FROM d
    WHERE users.id = d.id AND users.money >= d.money AND users.integral >= d.integral AND users.money2 >= d.money2
    RETURNING users.id
), i AS (
    SELECT * FROM unnest(ARRAY['INT' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDDHH24MISS') || lpad(':seq', 10, '0')],
                         ARRAY[gen_random_uuid()], ARRAY[:user_id]::bigint[], ARRAY[':order_no'], ARRAY['integral'],
                         ARRAY[1.00]::numeric[], ARRAY[10.00]::numeric[], ARRAY['integral'],
                         ARRAY[:u_integral - 10.00]::numeric[], ARRAY[3]::smallint[], ARRAY['积分支付'])
      WITH ORDINALITY
      AS i(pay_no, request_id, user_id, order_no, method, amount, asset_amount, asset, balance_after,
           pay_type, content, ord)
), p AS (
    INSERT INTO payments (pay_no, order_no, user_id, method, amount, asset_amount, status, request_id, paid_at)
    SELECT pay_no, order_no, user_id, method, amount, asset_amount, 'SUCCESS', request_id, now() FROM i
    RETURNING 1
), l AS (
    INSERT INTO asset_ledger (user_id, asset, change, balance_after, reason, order_no, pay_no)
    SELECT user_id, asset, -asset_amount, balance_after, 'pay', order_no, pay_no FROM i ORDER BY ord
), pp AS (
    INSERT INTO profit_pay (user_id, order_no, pay_no, change_money, content, pay_type, add_time)
    SELECT user_id, order_no, pay_no, -amount, content, pay_type, now() FROM i
), o AS (
    UPDATE orders SET status = 'PAID', pay_type = i.method, pay_no = i.pay_no, paid_at = now()
    FROM i WHERE orders.order_no = i.order_no AND orders.status = 'UNPAID'
    RETURNING 1
), bd AS (
    INSERT INTO balance_daily (user_id, day, paid)
    SELECT user_id, shanghai_day(now()), sum(amount) FROM i
    WHERE method = 'balance' GROUP BY user_id
    ON CONFLICT (user_id, day) DO UPDATE SET paid = balance_daily.paid + EXCLUDED.paid
)
SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM p), (SELECT count(*) FROM o);
INSERT INTO outbox (message_id, correlation_id, queue, kind, payload, delay_ms)
SELECT message_id, correlation_id, 'order.followup', 'order_paid', payload::jsonb, delay_ms
FROM unnest(ARRAY[gen_random_uuid()], ARRAY[gen_random_uuid()],
            ARRAY[jsonb_build_object('order_no', ':order_no', 'user_id', :user_id, 'amount', '1.00')::text],
            ARRAY[NULL]::bigint[]) WITH ORDINALITY
     AS e(message_id, correlation_id, payload, delay_ms, ord)
ORDER BY ord;
COMMIT;
