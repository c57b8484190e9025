-- An order waiting for a channel payment says so on its own row. Every pay path locks the order
-- row before it decides, and a row a concurrent transaction changed is read again once its lock
-- is granted; a payment row beside the order is read with the statement's old snapshot, so a
-- WeChat payment begun meanwhile went unseen and the order could be paid twice.

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check CHECK (status IN ('UNPAID', 'PAYING', 'PAID', 'CLOSED'));
-- PAYING: the payment the order waits for (its pay_type names the method)
ALTER TABLE orders ADD COLUMN paying_pay_no TEXT;

UPDATE orders o SET status = 'PAYING', paying_pay_no = p.pay_no, pay_type = 'wechat'
FROM payments p
WHERE p.order_no = o.order_no AND p.method = 'wechat' AND p.status = 'PAYING' AND o.status = 'UNPAID';

ALTER TABLE orders ADD CONSTRAINT orders_paying_check CHECK ((status = 'PAYING') = (paying_pay_no IS NOT NULL));

-- A channel payment whose trade was refunded at the channel before it settled here.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('PAYING', 'SUCCESS', 'FAILED', 'CLOSED', 'REFUNDED'));

-- v2: the sign type the channel order was created with. WeChat signs the order's notifies with
-- it, and only a notify signed with it is accepted (NULL, for payments from before: the
-- configured one).
ALTER TABLE payments ADD COLUMN sign_type TEXT CHECK (sign_type IN ('MD5', 'HMAC-SHA256'));
