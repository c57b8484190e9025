//! Applying internal-asset payments (balance, integral, money2), a batch at a time.
//!
//! One transaction per batch, seven round trips however many payments it holds (one more to
//! read the day's balance totals when it holds balance payments under a daily limit, and one
//! when an order in it is already paid, to tell a redelivery from a second payment):
//! 1. lock the batch's orders (`orders::lock`: sorted, so two batches never deadlock on them;
//!    an order a WeChat create made PAYING meanwhile is read as PAYING once the lock is granted);
//! 2. decide in Rust which requests are refused (`domain::order::check_payable`: unknown
//!    order, someone else's, paid, paying with WeChat, closed, wrong amount);
//! 3. lock the paying users (sorted by id), read their balance totals for the day
//!    (`balance_daily`, after the lock), and walk the batch in order against their locked
//!    balances, refusing DAILY_LIMIT past the day's limit and NOTENOUGH where a payment does not
//!    fit: the running balance also gives
//!    every ledger row its exact balance-after; draw a pay number for each payment that fits;
//! 4. one statement writes the money: a conditional `UPDATE users … FROM` grouped by account
//!    (`money >= delta`, so even a wrong decision cannot overdraw; the CHECK constraints stand
//!    behind it), and `INSERT … SELECT FROM unnest(…)` into payments, asset_ledger and
//!    profit_pay, with `UPDATE orders … FROM`;
//! 5. the order-paid events, one statement for the batch (`outbox::enqueue_all`);
//! 6. commit.
//!
//! Two requests for one order in one batch go in separate rounds (each its own transaction), so
//! the second sees the first's result. A failing batch is the caller's to retry one message at a
//! time.

use super::{Error, Result};
use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::orders::{self, OrderRow};
use super::outbox::{self, Outgoing};
use crate::domain::order::check_payable;
use crate::domain::payment::{Receipt, Refusal};
use crate::domain::{Asset, Code, Money, PayMethod, PayType};
use crate::mq::messages::OrderPaid;

/// One payment to apply.
#[derive(Debug, Clone)]
pub struct AssetPayment {
    pub request_id: Uuid,
    pub user_id: i64,
    pub order_no: String,
    pub method: PayMethod,
    /// The part of the order this pays, in yuan; must equal the order amount.
    pub amount: Money,
    /// What leaves the account, in the asset's unit.
    pub asset_amount: Money,
    /// Balance pay: the hash the pay password was verified against. The payment goes ahead only
    /// if it is still the user's hash once the user row is locked.
    pub verified_hash: Option<String>,
    /// Balance pay: a pay password is needed (`pay.balance.require_password`), so the payment
    /// goes ahead only with `verified_hash` the user's.
    pub password_required: bool,
    /// Balance pay: the most the user may pay with balance in the calendar day (Asia/Shanghai),
    /// this payment included (`pay.balance.max_daily_amount`); None: no limit.
    pub daily_limit: Option<Money>,
}

/// What became of one payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Paid(Receipt),
    Refused(Refusal),
    /// The pay password changed between its verification and the transaction: verify again.
    Stale,
}

/// Applies a batch; the answer is in the batch's order.
pub async fn apply(pool: &PgPool, batch: &[AssetPayment]) -> Result<Vec<Applied>> {
    let mut results: Vec<Option<Applied>> = vec![None; batch.len()];
    let mut pending: Vec<usize> = (0..batch.len()).collect();
    while !pending.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) = pending.iter().partition(|&&i| seen.insert(&batch[i].order_no));
        let items: Vec<&AssetPayment> = round.iter().map(|&i| &batch[i]).collect();
        for (i, applied) in round.iter().zip(apply_round(pool, &items).await?) {
            results[*i] = Some(applied);
        }
        pending = later;
    }
    Ok(results.into_iter().map(|r| r.expect("every request is decided in some round")).collect())
}

/// A paying user's row, locked.
#[derive(sqlx::FromRow)]
pub(super) struct LockedUser {
    pub id: i64,
    pub money: Money,
    pub integral: Money,
    pub money2: Money,
    pub pay_password_hash: Option<String>,
}

impl LockedUser {
    pub fn balance(&self, asset: Asset) -> Money {
        match asset {
            Asset::Money => self.money,
            Asset::Integral => self.integral,
            Asset::Money2 => self.money2,
        }
    }
}

/// Locks these users (in id order, so two payers never deadlock on them) and reads their
/// accounts as they are once the locks are granted. Orders are locked before users, always.
pub(super) async fn lock_users(tx: &mut sqlx::PgConnection, user_ids: &[i64]) -> Result<Vec<LockedUser>> {
    Ok(sqlx::query_as(
        "SELECT id, money, integral, money2, pay_password_hash FROM users
         WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind(user_ids)
    .fetch_all(&mut *tx)
    .await?)
}

/// What step 2 makes of a request.
enum Decision {
    Done(Applied),
    /// This request already paid the order (a redelivery): answer its receipt again.
    Replay,
    /// Passes the order checks; the balance decides.
    Candidate,
}

/// A payment that fits, with everything the write statement needs.
struct Settled<'a> {
    payment: &'a AssetPayment,
    asset: Asset,
    pay_no: String,
    balance_after: Money,
    order: &'a OrderRow,
}

/// Applies requests for distinct orders in one transaction.
async fn apply_round(pool: &PgPool, items: &[&AssetPayment]) -> Result<Vec<Applied>> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, items).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Applies requests for distinct orders in the caller's transaction: what `apply` does for
/// each round, with the orders and users locked until the caller commits or rolls back.
pub async fn apply_in(tx: &mut sqlx::PgConnection, items: &[&AssetPayment]) -> Result<Vec<Applied>> {
    let order_nos: Vec<&str> = items.iter().map(|p| p.order_no.as_str()).collect();
    let orders = orders::lock(tx, &order_nos).await?;
    let by_no: HashMap<&str, &OrderRow> = orders.iter().map(|o| (o.order_no.as_str(), o)).collect();
    // Who paid the paid ones, read after the lock: a row read in the same statement as the
    // lock would be the one from before the wait, missing a payment committed meanwhile.
    let paid: Vec<&str> = orders.iter().filter_map(|o| o.pay_no.as_deref()).collect();
    let paid_by: HashMap<String, Uuid> = if paid.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as("SELECT pay_no, request_id FROM payments WHERE pay_no = ANY($1)")
            .bind(&paid)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };

    let decisions: Vec<Decision> = items
        .iter()
        .map(|p| {
            let order = by_no.get(p.order_no.as_str()).copied();
            let payer = order.and_then(|o| paid_by.get(o.pay_no.as_deref()?)).copied();
            decide(p, order, payer)
        })
        .collect();

    // Step 3: the paying users, locked in id order, walked in batch order.
    let mut user_ids: Vec<i64> =
        decisions.iter().zip(items).filter(|(d, _)| matches!(d, Decision::Candidate)).map(|(_, p)| p.user_id).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let users = if user_ids.is_empty() { Vec::new() } else { lock_users(tx, &user_ids).await? };
    let mut balances: HashMap<i64, BTreeMap<Asset, Money>> = users
        .iter()
        .map(|u| (u.id, [Asset::Money, Asset::Integral, Asset::Money2].map(|a| (a, u.balance(a))).into()))
        .collect();
    let hashes: HashMap<i64, Option<&str>> = users.iter().map(|u| (u.id, u.pay_password_hash.as_deref())).collect();
    // What each limited user paid with balance today, read after the user's lock: a payment
    // that committed while this waited is counted, so concurrent payments cannot pass the
    // limit together.
    let limited: Vec<i64> = decisions
        .iter()
        .zip(items)
        .filter(|(d, p)| matches!(d, Decision::Candidate) && p.daily_limit.is_some())
        .map(|(_, p)| p.user_id)
        .collect();
    let mut paid_today: HashMap<i64, Money> =
        if limited.is_empty() { HashMap::new() } else { balance_paid_today(tx, &limited).await? };

    let mut outcomes: Vec<Option<Applied>> = Vec::with_capacity(items.len());
    let mut fitting: Vec<(usize, &AssetPayment, Asset, Money)> = Vec::new();
    let mut replays: Vec<(usize, Uuid, Option<String>)> = Vec::new();
    for (i, (decision, payment)) in decisions.into_iter().zip(items).enumerate() {
        outcomes.push(None);
        match decision {
            Decision::Done(applied) => outcomes[i] = Some(applied),
            Decision::Replay => replays.push((i, payment.request_id, by_no[payment.order_no.as_str()].pay_no.clone())),
            Decision::Candidate => {
                let asset = payment.method.asset().expect("asset payments only");
                if payment.password_required
                    && (payment.verified_hash.is_none()
                        || hashes.get(&payment.user_id).copied().flatten() != payment.verified_hash.as_deref())
                {
                    outcomes[i] = Some(Applied::Stale);
                    continue;
                }
                let today = paid_today.get(&payment.user_id).copied().unwrap_or(Money::ZERO);
                if let Some(refusal) = past_daily_limit(payment.daily_limit, today, payment.amount) {
                    outcomes[i] = Some(Applied::Refused(refusal));
                    continue;
                }
                let balance = balances.get_mut(&payment.user_id).and_then(|b| b.get_mut(&asset));
                let Some(balance) = balance else {
                    outcomes[i] = Some(Applied::Refused(Refusal::new(Code::NotFound, "order not found")));
                    continue;
                };
                match balance.checked_sub(payment.asset_amount) {
                    Some(after) => {
                        *balance = after;
                        if payment.daily_limit.is_some() {
                            paid_today
                                .insert(payment.user_id, today.checked_add(payment.amount).expect("checked above"));
                        }
                        fitting.push((i, payment, asset, after));
                    }
                    None => outcomes[i] = Some(Applied::Refused(not_enough(asset, *balance, payment.asset_amount))),
                }
            }
        }
    }

    let mut settled: Vec<(usize, Settled)> = Vec::with_capacity(fitting.len());
    if !fitting.is_empty() {
        let seqs: Vec<i64> = sqlx::query_scalar("SELECT nextval('pay_no_seq') FROM generate_series(1, $1)")
            .bind(fitting.len() as i64)
            .fetch_all(&mut *tx)
            .await?;
        for ((i, payment, asset, balance_after), seq) in fitting.into_iter().zip(seqs) {
            let order = by_no[payment.order_no.as_str()];
            let pay_no = pay_no(payment.method.pay_no_prefix(), order.now, seq);
            settled.push((i, Settled { payment, asset, pay_no, balance_after, order }));
        }
        write_settled(tx, &settled).await?;
    }
    let replayed = if replays.is_empty() {
        HashMap::new()
    } else {
        receipts_by_request(tx, &replays.iter().map(|(_, id, _)| *id).collect::<Vec<_>>()).await?
    };

    for (i, s) in settled {
        outcomes[i] = Some(Applied::Paid(Receipt {
            pay_no: s.pay_no,
            method: s.payment.method,
            pay_time: s.order.now,
            remaining: s.balance_after,
        }));
    }
    for (i, request_id, pay_no) in replays {
        outcomes[i] = Some(match replayed.get(&request_id) {
            Some(receipt) => Applied::Paid(receipt.clone()),
            // The order names this request as its payer, so its receipt exists; if it ever
            // does not, say what is certain.
            None => Applied::Refused(Refusal { pay_no, ..Refusal::new(Code::OrderPaid, "order already paid") }),
        });
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every request decided")).collect())
}

/// DAILY_LIMIT, if paying `amount` more with balance today passes the limit.
pub(super) fn past_daily_limit(limit: Option<Money>, today: Money, amount: Money) -> Option<Refusal> {
    let limit = limit?;
    today.checked_add(amount).is_none_or(|after| after > limit).then(|| {
        Refusal::new(
            Code::DailyLimit,
            format!(
                "balance payments are limited to {limit} yuan a day: {today} paid today, {amount} more would pass it"
            ),
        )
    })
}

/// NOTENOUGH: the asset does not cover what the payment takes.
pub(super) fn not_enough(asset: Asset, left: Money, needed: Money) -> Refusal {
    Refusal::new(Code::NotEnough, format!("not enough {}: {left} left, {needed} needed", asset_name(asset)))
}

/// What each of these users paid with balance in the transaction's calendar day in
/// Asia/Shanghai (seed 000: the limit is per day there), from `balance_daily`.
pub(super) async fn balance_paid_today(tx: &mut sqlx::PgConnection, user_ids: &[i64]) -> Result<HashMap<i64, Money>> {
    let rows: Vec<(i64, Money)> = sqlx::query_as(
        "SELECT user_id, paid FROM balance_daily
         WHERE user_id = ANY($1) AND day = shanghai_day(now())",
    )
    .bind(user_ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The order checks of one request, given its locked order (if any) and, for a paid order, the
/// request that paid it.
fn decide(payment: &AssetPayment, order: Option<&OrderRow>, paid_by: Option<Uuid>) -> Decision {
    if order.is_some_and(|o| o.user_id == payment.user_id && o.status.was_paid()) && paid_by == Some(payment.request_id)
    {
        return Decision::Replay;
    }
    match check_payable(order.map(OrderRow::facts).as_ref(), payment.user_id, payment.amount) {
        Ok(()) => Decision::Candidate,
        Err(refusal) => Decision::Done(Applied::Refused(refusal)),
    }
}

/// `BAL` (the method's prefix) + UTC date and time + the sequence number: unique, and sortable
/// by time.
pub(super) fn pay_no(prefix: &str, now: OffsetDateTime, seq: i64) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    format!(
        "{}{:04}{:02}{:02}{:02}{:02}{:02}{:010}",
        prefix,
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        seq
    )
}

pub(super) fn asset_name(asset: Asset) -> &'static str {
    match asset {
        Asset::Money => "balance",
        Asset::Integral => "integral",
        Asset::Money2 => "money2",
    }
}

/// Step 4: the single statement that moves the money and records it everywhere.
async fn write_settled(tx: &mut sqlx::PgConnection, settled: &[(usize, Settled<'_>)]) -> Result<()> {
    // Deltas grouped by account: one conditional UPDATE row per user.
    let mut deltas: BTreeMap<i64, [Decimal; 3]> = BTreeMap::new();
    for (_, s) in settled {
        let slot = match s.asset {
            Asset::Money => 0,
            Asset::Integral => 1,
            Asset::Money2 => 2,
        };
        deltas.entry(s.payment.user_id).or_default()[slot] += s.payment.asset_amount.as_decimal();
    }
    let d_ids: Vec<i64> = deltas.keys().copied().collect();
    let column = |slot: usize| deltas.values().map(|d| d[slot]).collect::<Vec<Decimal>>();

    let n = settled.len();
    let mut pay_nos = Vec::with_capacity(n);
    let mut request_ids = Vec::with_capacity(n);
    let mut user_ids = Vec::with_capacity(n);
    let mut order_nos = Vec::with_capacity(n);
    let mut methods = Vec::with_capacity(n);
    let mut amounts = Vec::with_capacity(n);
    let mut asset_amounts = Vec::with_capacity(n);
    let mut assets = Vec::with_capacity(n);
    let mut balances_after = Vec::with_capacity(n);
    let mut pay_types = Vec::with_capacity(n);
    let mut contents = Vec::with_capacity(n);
    let mut events = Vec::with_capacity(n);
    for (_, s) in settled {
        let p = s.payment;
        events.push(OrderPaid {
            order_no: p.order_no.clone(),
            user_id: p.user_id,
            goods_id: s.order.goods_id,
            kind: s.order.kind,
            num: s.order.num,
            amount: p.amount,
            pay_no: s.pay_no.clone(),
            pay_type: PayType::Single(p.method),
            paid_at: s.order.now,
        });
        pay_nos.push(s.pay_no.as_str());
        request_ids.push(p.request_id);
        user_ids.push(p.user_id);
        order_nos.push(p.order_no.as_str());
        methods.push(p.method.as_str());
        amounts.push(p.amount.as_decimal());
        asset_amounts.push(p.asset_amount.as_decimal());
        assets.push(s.asset.as_str());
        balances_after.push(s.balance_after.as_decimal());
        pay_types.push(p.method.pay_type());
        contents.push(p.method.content());
    }

    let (users_updated, payments_inserted, orders_updated): (i64, i64, i64) = sqlx::query_as(
        "WITH d AS (
             SELECT * FROM unnest($1::bigint[], $2::numeric[], $3::numeric[], $4::numeric[]) AS d(id, money, integral, money2)
         ), u AS (
             UPDATE users SET money = users.money - d.money,
                              integral = users.integral - d.integral,
                              money2 = users.money2 - d.money2
             FROM d
             WHERE users.id = d.id AND users.money >= d.money AND users.integral >= d.integral AND users.money2 >= d.money2
             RETURNING users.id
         ), i AS (
             SELECT * FROM unnest($5::text[], $6::uuid[], $7::bigint[], $8::text[], $9::text[], $10::numeric[],
                                  $11::numeric[], $12::text[], $13::numeric[], $14::smallint[], $15::text[])
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
         SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM p), (SELECT count(*) FROM o)",
    )
    .bind(&d_ids)
    .bind(column(0))
    .bind(column(1))
    .bind(column(2))
    .bind(&pay_nos)
    .bind(&request_ids)
    .bind(&user_ids)
    .bind(&order_nos)
    .bind(&methods)
    .bind(&amounts)
    .bind(&asset_amounts)
    .bind(&assets)
    .bind(&balances_after)
    .bind(&pay_types)
    .bind(&contents)
    .fetch_one(&mut *tx)
    .await?;

    // The rows were locked and checked above, so these hold; if they ever do not, roll back
    // rather than commit a half-applied batch.
    if users_updated as usize != d_ids.len() || payments_inserted as usize != n || orders_updated as usize != n {
        return Err(Error::Invariant(format!(
            "batch write mismatch: {users_updated}/{} users, {payments_inserted}/{n} payments, {orders_updated}/{n} orders",
            d_ids.len()
        )));
    }
    let outgoing: Vec<Outgoing<'_, OrderPaid>> = settled
        .iter()
        .zip(&events)
        .map(|((_, s), event)| Outgoing { correlation_id: Some(s.payment.request_id), ..Outgoing::new(event) })
        .collect();
    outbox::enqueue_all(tx, &outgoing).await
}

/// The receipts of payments made by these requests (for answering a redelivered request).
async fn receipts_by_request(tx: &mut sqlx::PgConnection, request_ids: &[Uuid]) -> Result<HashMap<Uuid, Receipt>> {
    let rows: Vec<ReceiptRow> = sqlx::query_as(
        "SELECT p.request_id, p.pay_no, p.method, p.paid_at AS pay_time, l.balance_after AS remaining
         FROM payments p JOIN asset_ledger l ON l.pay_no = p.pay_no AND l.reason = 'pay'
         WHERE p.request_id = ANY($1) AND p.status IN ('SUCCESS', 'PARTIALLY_REFUNDED', 'REFUNDED')",
    )
    .bind(request_ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let receipt = Receipt { pay_no: r.pay_no, method: r.method, pay_time: r.pay_time, remaining: r.remaining };
            (r.request_id, receipt)
        })
        .collect())
}

#[derive(sqlx::FromRow)]
struct ReceiptRow {
    request_id: Uuid,
    pay_no: String,
    method: PayMethod,
    pay_time: OffsetDateTime,
    remaining: Money,
}

/// How many payments of a method succeeded (benchmark and tests).
pub async fn count_successful(pool: &PgPool, method: PayMethod) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM payments WHERE method = $1 AND status = 'SUCCESS'")
        .bind(method.as_str())
        .fetch_one(pool)
        .await?)
}
