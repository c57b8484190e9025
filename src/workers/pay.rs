//! The pay-worker: consumes `pay.requests`, settles each payment in the database, and replies
//! to the waiting ingress.
//!
//! A batch goes through two phases:
//! 1. balance payments verify their pay passwords (every try counted in Redis first; locked past
//!    `pay.password_max_attempts` tries), all of the batch's bcrypt work side by side on the
//!    blocking pool; a redelivered request that already paid skips this and is answered from
//!    its receipt;
//! 2. every payment still standing is applied by `store::payments::apply` in one transaction.
//!    If that transaction fails, each message is applied alone, so one bad message fails alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, CacheError};
use crate::channel::{ChannelError, PayChannel, Prepaid, PrepayOrder};
use crate::config::{PaySettings, Settings};
use crate::domain::order::check_payable;
use crate::domain::payment::Refusal;
use crate::domain::{Code, PayMethod};
use crate::mq::consumer::{self, HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::{AssetPayRequested, PayReplied, PayRequested, PrepaidReply, WechatCreateRequested};
use crate::mq::topology::{PAY_REQUESTS, PAY_TIMEOUT, Topology};
use crate::password::{PasswordHasher, SealedFor, Sealer};
use crate::store::payments::{Applied, AssetPayment};
use crate::store::wechat::{Begun, ChannelVersion, Recorded};
use crate::store::{self, is_conflict, is_unavailable};
use crate::wechat::Wechat;

/// Settles pay requests.
pub struct PayHandler {
    db: PgPool,
    cache: Cache,
    passwords: PasswordHasher,
    /// Opens the pay passwords sealed by the ingress.
    sealer: Sealer,
    pay: PaySettings,
    /// None when WeChat Pay is not configured (WeChat creates are then refused).
    wechat: Option<Arc<Wechat>>,
    /// A prepay younger than this is reused by a second create.
    prepay_valid: std::time::Duration,
}

/// What becomes of one request before it is serialised into the reply.
type Answer = Result<PayReplied, HandleError>;

impl PayHandler {
    pub fn new(
        db: PgPool,
        cache: Cache,
        passwords: PasswordHasher,
        sealer: Sealer,
        pay: PaySettings,
        wechat: Option<Arc<Wechat>>,
        prepay_valid: std::time::Duration,
    ) -> PayHandler {
        PayHandler { db, cache, passwords, sealer, pay, wechat, prepay_valid }
    }

    /// Phase 1 for the batch's balance payments: `Ok(hash)` for a verified password, or the
    /// answer for a refused one.
    ///
    /// Every distinct password tried is counted before it is verified (INCRBY, atomic across
    /// batches and workers), so a burst of concurrent guesses cannot outrun the lock: past
    /// `pay.password_max_attempts` within the window a guess is refused unverified. The same
    /// password sent by several requests of a batch (a user paying several orders) is one try,
    /// verified once; a right password clears the count.
    async fn check_passwords(
        &self,
        requests: &[(usize, &AssetPayRequested)],
    ) -> HashMap<usize, Result<String, Answer>> {
        let mut out = HashMap::new();
        if requests.is_empty() {
            return out;
        }
        let mut user_ids: Vec<i64> = requests.iter().map(|(_, r)| r.user_id).collect();
        user_ids.sort_unstable();
        user_ids.dedup();
        let hashes = match store::users::pay_password_hashes(&self.db, &user_ids).await {
            Ok(rows) => rows.into_iter().collect::<HashMap<i64, String>>(),
            Err(e) => return requests.iter().map(|(i, _)| (*i, Err(Err(db_error(&e))))).collect(),
        };

        // The distinct (user, password) tries of the batch, in order of first appearance, and
        // which requests made each.
        let mut tries: Vec<(i64, String)> = Vec::new();
        let mut made_by: Vec<Vec<usize>> = Vec::new();
        for (i, request) in requests {
            if !hashes.contains_key(&request.user_id) {
                let refusal = Refusal::new(Code::PasswordNotSet, "set a pay password before paying with balance");
                out.insert(*i, Err(refused(refusal)));
                continue;
            }
            let sealed_for = SealedFor {
                user_id: request.user_id,
                request_id: request.request_id,
                order_no: &request.order_no,
                amount: request.amount,
            };
            let opened = request.sealed_password.as_deref().map(|s| self.sealer.open(&sealed_for, s));
            let password = match opened {
                Some(Ok(password)) => password,
                Some(Err(e)) => {
                    out.insert(*i, Err(Err(HandleError::Permanent(e.to_string()))));
                    continue;
                }
                None => {
                    let reason = "balance pay request without a pay password".into();
                    out.insert(*i, Err(Err(HandleError::Permanent(reason))));
                    continue;
                }
            };
            match tries.iter().position(|(u, p)| *u == request.user_id && *p == password) {
                Some(t) => made_by[t].push(*i),
                None => {
                    tries.push((request.user_id, password));
                    made_by.push(vec![*i]);
                }
            }
        }
        let mut per_user: Vec<(i64, u32)> = Vec::new();
        for (user, _) in &tries {
            match per_user.iter_mut().find(|(u, _)| u == user) {
                Some((_, k)) => *k += 1,
                None => per_user.push((*user, 1)),
            }
        }
        let checks_per_minute = self.pay.password_checks_per_minute;
        let counts =
            match self.cache.count_password_attempts(&per_user, self.pay.password_lock(), checks_per_minute).await {
                Ok(counts) => counts,
                Err(e) => {
                    out.extend(made_by.iter().flatten().map(|i| (*i, Err(Err(cache_error(&e))))));
                    return out;
                }
            };
        // Each try's number within the window (the user's count before this batch, plus its
        // place among the user's tries in the batch), or None past the user's checks this minute.
        let mut next: HashMap<i64, (u32, u32)> = per_user
            .iter()
            .zip(&counts)
            .map(|((user, _), c)| (*user, (c.attempts - c.allowed + 1, c.allowed)))
            .collect();
        let numbers: Vec<Option<u32>> = tries
            .iter()
            .map(|(user, _)| {
                let (number, allowed) = next.get_mut(user).expect("every user was counted");
                (*allowed > 0).then(|| {
                    *allowed -= 1;
                    *number += 1;
                    *number - 1
                })
            })
            .collect();
        let max = self.pay.password_max_attempts;

        // bcrypt runs on the blocking pool; the batch's checks run side by side.
        let checks = futures_util::future::join_all(tries.iter().zip(&numbers).map(|((user, password), n)| {
            let hash = &hashes[user];
            async move {
                match n {
                    Some(n) if *n <= max => Some(self.passwords.verify(password, hash).await),
                    _ => None,
                }
            }
        }))
        .await;
        let mut knew_it = HashSet::new();
        for ((((user_id, _), n), check), requests) in tries.iter().zip(numbers).zip(checks).zip(made_by) {
            let answer = match (n, check) {
                (None, _) => {
                    tracing::info!(user_id, checks_per_minute, "pay password checks capped");
                    Err(refused(Refusal {
                        retry_after_secs: Some(60),
                        ..Refusal::new(
                            Code::RateLimited,
                            format!(
                                "too many pay password checks (at most {checks_per_minute} a minute); try again in a minute"
                            ),
                        )
                    }))
                }
                (Some(_), Some(Ok(true))) => {
                    knew_it.insert(*user_id);
                    Ok(hashes[user_id].clone())
                }
                (Some(n), None) => {
                    tracing::info!(user_id, tries = n, "pay password locked");
                    Err(refused(Refusal::new(Code::PasswordLocked, self.locked_message())))
                }
                (Some(n), Some(Ok(false))) if n >= max => {
                    tracing::info!(user_id, tries = n, "wrong pay password, now locked");
                    Err(refused(Refusal::new(Code::PasswordLocked, self.locked_message())))
                }
                (Some(n), Some(Ok(false))) => {
                    tracing::info!(user_id, tries = n, "wrong pay password");
                    let left = max - n;
                    Err(refused(Refusal {
                        tries_left: Some(left),
                        ..Refusal::new(
                            Code::PasswordWrong,
                            format!("wrong pay password; {left} tries left before balance pay locks"),
                        )
                    }))
                }
                (Some(_), Some(Err(e))) => {
                    tracing::error!(error = %e, user_id, "stored pay password hash cannot be checked");
                    let refusal =
                        Refusal::new(Code::SystemError, "your pay password cannot be checked; contact support");
                    Err(refused(refusal))
                }
            };
            for i in requests {
                out.insert(i, answer.clone());
            }
        }
        // The count is there to stop guessing; whoever knows the password starts afresh.
        if !knew_it.is_empty() {
            let users: Vec<i64> = knew_it.into_iter().collect();
            if let Err(e) = self.cache.clear_password_attempts(&users).await {
                tracing::warn!(error = %e, "could not reset pay-password try counters");
            }
        }
        out
    }

    fn locked_message(&self) -> String {
        format!(
            "too many wrong pay passwords; balance pay is locked for up to {} minutes (reset the pay password to unlock)",
            self.pay.password_lock_secs.div_ceil(60)
        )
    }

    /// Phase 2: one transaction for the batch, or one per message if that fails.
    async fn apply(&self, payments: &[AssetPayment]) -> Vec<Result<Applied, HandleError>> {
        match store::payments::apply(&self.db, payments).await {
            Ok(applied) => applied.into_iter().map(Ok).collect(),
            Err(e) if is_unavailable(&e) => payments.iter().map(|_| Err(db_error(&e))).collect(),
            Err(e) if payments.len() == 1 => vec![Err(db_error(&e))],
            Err(e) => {
                tracing::warn!(error = %e, batch = payments.len(), "batch failed, applying its payments one by one");
                let mut out = Vec::with_capacity(payments.len());
                for payment in payments {
                    out.push(match store::payments::apply(&self.db, std::slice::from_ref(payment)).await {
                        Ok(mut applied) => Ok(applied.remove(0)),
                        Err(e) => {
                            tracing::warn!(error = %e, order_no = %payment.order_no, request_id = %payment.request_id, "payment failed");
                            Err(db_error(&e))
                        }
                    });
                }
                out
            }
        }
    }
}

/// What a pay request is about, whatever its kind (for logs and remembered refusals).
struct Subject<'a> {
    request_id: uuid::Uuid,
    order_no: &'a str,
    user_id: i64,
    method: &'static str,
    amount: crate::domain::Money,
}

fn subject(message: &PayRequested) -> Subject<'_> {
    match message {
        PayRequested::Asset(r) => Subject {
            request_id: r.request_id,
            order_no: &r.order_no,
            user_id: r.user_id,
            method: r.method.as_str(),
            amount: r.amount,
        },
        PayRequested::WechatCreate(r) => Subject {
            request_id: r.request_id,
            order_no: &r.order_no,
            user_id: r.user_id,
            method: "wechat",
            amount: r.amount,
        },
    }
}

impl Handler for PayHandler {
    type Message = PayRequested;

    async fn handle(&self, batch: &[Incoming<PayRequested>]) -> Vec<Result<Outcome, HandleError>> {
        let mut answers: Vec<Option<Answer>> = vec![None; batch.len()];
        let mut assets = Vec::new();
        let mut wechat = Vec::new();
        for (i, incoming) in batch.iter().enumerate() {
            match &incoming.message {
                PayRequested::Asset(r) => assets.push((i, incoming, r)),
                PayRequested::WechatCreate(r) => wechat.push((i, r)),
            }
        }
        if !assets.is_empty() {
            let items: Vec<(&Incoming<PayRequested>, &AssetPayRequested)> =
                assets.iter().map(|(_, m, r)| (*m, *r)).collect();
            for ((i, _, _), answer) in assets.iter().zip(self.handle_assets(&items).await) {
                answers[*i] = Some(answer);
            }
        }
        // WeChat creates wait on WeChat's answer; the batch's run side by side.
        let created = futures_util::future::join_all(wechat.iter().map(|(_, r)| self.create_wechat(r))).await;
        for ((i, _), answer) in wechat.iter().zip(created) {
            answers[*i] = Some(answer);
        }
        let answers: Vec<Answer> = answers.into_iter().map(|a| a.expect("every request has an answer")).collect();

        let subjects: Vec<Subject> = batch.iter().map(|incoming| subject(&incoming.message)).collect();
        self.remember_refusals(&subjects, &answers).await;
        for (s, answer) in subjects.iter().zip(&answers) {
            log_answer(s, answer);
        }
        answers
            .into_iter()
            .map(|answer| {
                answer.map(|body| Outcome { reply: Some(serde_json::to_vec(&body).expect("a reply serialises")) })
            })
            .collect()
    }

    fn failure_reply(&self, _reason: &str) -> Option<Vec<u8>> {
        let refusal = Refusal::new(
            Code::SystemError,
            "this payment could not be processed and nothing was charged; please try again or contact support",
        );
        Some(serde_json::to_vec(&PayReplied::Refused(refusal)).expect("a reply serialises"))
    }
}

impl PayHandler {
    /// Internal-asset payments: passwords, then one transaction for them all.
    async fn handle_assets(&self, items: &[(&Incoming<PayRequested>, &AssetPayRequested)]) -> Vec<Answer> {
        let requests: Vec<&AssetPayRequested> = items.iter().map(|(_, r)| *r).collect();
        let mut answers: Vec<Option<Answer>> =
            requests.iter().map(|r| check_shape(r, &self.pay).err().map(refused)).collect();

        // Balance payments, cheap checks first: a pay password costs a bcrypt verify, so the
        // order is read (unlocked) and an order that cannot be paid (missing, someone else's,
        // paid, closed, waiting for WeChat, another amount) is refused before any. A request
        // that already paid it (a redelivery) is answered from its receipt: its password was
        // checked when it paid, and may have changed since. The transaction checks again.
        let candidates: Vec<usize> =
            (0..requests.len()).filter(|&i| answers[i].is_none() && requests[i].method == PayMethod::Balance).collect();
        let order_nos: Vec<&str> = candidates.iter().map(|&i| requests[i].order_no.as_str()).collect();
        let seen = if order_nos.is_empty() {
            HashMap::new()
        } else {
            match store::orders::read(&self.db, &order_nos).await {
                Ok(seen) => seen.into_iter().map(|o| (o.order.order_no.clone(), o)).collect::<HashMap<_, _>>(),
                Err(e) => return items.iter().map(|_| Err(db_error(&e))).collect(),
            }
        };
        let mut balance: Vec<(usize, &AssetPayRequested)> = Vec::new();
        for i in candidates {
            let r = requests[i];
            let seen = seen.get(&r.order_no);
            if seen.is_some_and(|o| o.paid_by == Some(r.request_id)) {
                continue;
            }
            match check_payable(seen.map(|o| o.order.facts()).as_ref(), r.user_id, r.amount) {
                Ok(()) => balance.push((i, r)),
                Err(refusal) => answers[i] = Some(refused(refusal)),
            }
        }
        let mut verified = HashMap::new();
        for (i, check) in self.check_passwords(&balance).await {
            match check {
                Ok(hash) => {
                    verified.insert(i, hash);
                }
                Err(answer) => answers[i] = Some(answer),
            }
        }

        let standing: Vec<usize> = (0..requests.len()).filter(|i| answers[*i].is_none()).collect();
        let payments: Vec<AssetPayment> = standing
            .iter()
            .map(|&i| {
                let r = requests[i];
                AssetPayment {
                    request_id: r.request_id,
                    user_id: r.user_id,
                    order_no: r.order_no.clone(),
                    method: r.method,
                    amount: r.amount,
                    asset_amount: r.asset_amount,
                    verified_hash: verified.remove(&i),
                }
            })
            .collect();
        for (&i, applied) in standing.iter().zip(self.apply(&payments).await) {
            answers[i] = Some(match applied {
                Ok(Applied::Paid(receipt)) => Ok(PayReplied::Paid(receipt)),
                Ok(Applied::Refused(refusal)) => refused(refusal),
                Ok(Applied::Stale) => Err(HandleError::Retryable("pay password changed while paying".into())),
                Err(e) => Err(e),
            });
        }
        answers.into_iter().map(|a| a.expect("every request has an answer")).collect()
    }

    /// A WeChat create: the order checked and its payment begun in the database, then the
    /// prepay at WeChat (or the still-valid one reused), answered as freshly signed pay params.
    async fn create_wechat(&self, r: &WechatCreateRequested) -> Answer {
        let Some(wechat) = &self.wechat else {
            return refused(Refusal::new(Code::SystemError, "WeChat Pay is not configured on this fleet"));
        };
        if r.amount.is_zero() || r.amount > self.pay.max_amount {
            return refused(Refusal::new(
                Code::Validation,
                format!("amount must be above zero and at most {}", self.pay.max_amount),
            ));
        }
        let version = ChannelVersion { api_version: wechat.api_version(), sign_type: wechat.v2_sign_type() };
        let begun = match store::wechat::begin(&self.db, r, version, self.prepay_valid).await {
            Ok(begun) => begun,
            Err(e) => return Err(db_error(&e)),
        };
        let reply = |pay_no: String, prepaid: &Prepaid| {
            Ok(PayReplied::Prepaid(PrepaidReply {
                order_no: r.order_no.clone(),
                pay_no,
                pay_params: wechat.pay_params(prepaid),
            }))
        };
        let (pay_no, expires_at, details) = match begun {
            Begun::Refused(refusal) => return refused(refusal),
            Begun::Reuse { pay_no, prepaid } => return reply(pay_no, &prepaid),
            Begun::Prepay { pay_no, expires_at, details } => (pay_no, expires_at, details),
        };
        let order = PrepayOrder {
            out_trade_no: pay_no.clone(),
            description: details.description,
            amount: r.amount,
            trade_type: r.trade_type,
            openid: details.openid,
            client_ip: details.client_ip,
            expires_at,
        };
        match wechat.prepay(&order).await {
            Ok(prepaid) => match store::wechat::record_prepaid(&self.db, &pay_no, &prepaid).await {
                Ok(Recorded::Kept) => reply(pay_no, &prepaid),
                Ok(Recorded::Refused(refusal)) => {
                    // The order stopped waiting for this payment while WeChat answered (its pay
                    // time ran out): no pay params leave for it, and the trade is closed.
                    close_unwanted(wechat, &self.db, &pay_no).await;
                    refused(refusal)
                }
                Err(e) => Err(db_error(&e)),
            },
            Err(ChannelError::AlreadyPaid) => {
                // Paid at WeChat already (a notify may be on its way): settle from a query.
                report_from_wechat(wechat, &self.db, &pay_no).await?;
                refused(Refusal::new(Code::OrderPaid, "already paid at WeChat; the order shows as paid in a moment"))
            }
            Err(ChannelError::Closed) => {
                // Closed at WeChat: recorded from a query, the order is payable another way.
                report_from_wechat(wechat, &self.db, &pay_no).await?;
                refused(Refusal::new(
                    Code::OrderClosed,
                    "the WeChat order is closed; pay another way or place a new order",
                ))
            }
            Err(e) => Err(channel_error(&e)),
        }
    }

    /// Keeps each refusal where the payer's status query finds it: after a 202 the refusal
    /// never reached them. Refusals about orders that are not theirs, or already paid, say
    /// nothing the status does not.
    async fn remember_refusals(&self, subjects: &[Subject<'_>], answers: &[Answer]) {
        let refusals: Vec<(&str, i64, &Refusal)> = subjects
            .iter()
            .zip(answers)
            .filter_map(|(s, answer)| match answer {
                Ok(PayReplied::Refused(refusal)) if !matches!(refusal.code, Code::NotFound | Code::OrderPaid) => {
                    Some((s.order_no, s.user_id, refusal))
                }
                _ => None,
            })
            .collect();
        if refusals.is_empty() {
            return;
        }
        let ttl = std::time::Duration::from_secs(self.pay.order_ttl_secs);
        if let Err(e) = self.cache.remember_refusals(&refusals, ttl).await {
            tracing::warn!(error = %e, "could not keep refusals for the status endpoint");
        }
    }
}

/// Queries WeChat for a trade and queues the answer for the notify-worker (which settles, or
/// records a failure or an alert, from it).
pub(crate) async fn report_from_wechat(wechat: &Wechat, db: &PgPool, pay_no: &str) -> Result<(), HandleError> {
    let trade = wechat.query(pay_no).await.map_err(|e| channel_error(&e))?;
    store::wechat::report_trade(db, &trade).await.map_err(|e| db_error(&e))
}

/// Closes a trade no order waits for any more. Best effort: nobody holds pay params for it (they
/// were never handed out), and WeChat closes it by itself at the order's pay time.
async fn close_unwanted(wechat: &Wechat, db: &PgPool, pay_no: &str) {
    match wechat.close(pay_no).await {
        Ok(()) | Err(ChannelError::Closed) | Err(ChannelError::NotFound) => {
            tracing::info!(pay_no, "closed a WeChat trade its order no longer waits for");
        }
        // Paid after all (it cannot have been through us): the notify-worker records it.
        Err(ChannelError::AlreadyPaid) => {
            if let Err(e) = report_from_wechat(wechat, db, pay_no).await {
                tracing::error!(error = %e, pay_no, "ALERT: a WeChat trade no order waits for is paid, and its report failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, pay_no, "could not close a WeChat trade no order waits for; it expires at WeChat")
        }
    }
}

/// A channel failure as the consumer framework's verdict.
pub(crate) fn channel_error(e: &ChannelError) -> HandleError {
    match e {
        ChannelError::Transient(_) | ChannelError::NotFound => HandleError::Retryable(format!("WeChat: {e}")),
        ChannelError::Refused { .. } | ChannelError::Forged(_) | ChannelError::AlreadyPaid | ChannelError::Closed => {
            tracing::error!(error = %e, "WeChat refused a request; check the merchant settings");
            HandleError::Permanent(format!("WeChat: {e}"))
        }
    }
}

fn log_answer(s: &Subject, answer: &Answer) {
    match answer {
        Ok(PayReplied::Paid(receipt)) => tracing::info!(
            request_id = %s.request_id, order_no = %s.order_no, user_id = s.user_id, method = s.method,
            amount = %s.amount, pay_no = %receipt.pay_no, remaining = %receipt.remaining, "paid"
        ),
        Ok(PayReplied::Prepaid(prepaid)) => tracing::info!(
            request_id = %s.request_id, order_no = %s.order_no, user_id = s.user_id, method = s.method,
            amount = %s.amount, pay_no = %prepaid.pay_no, "WeChat payment ready"
        ),
        Ok(PayReplied::Refused(refusal)) => tracing::info!(
            request_id = %s.request_id, order_no = %s.order_no, user_id = s.user_id, method = s.method,
            code = refusal.code.as_str(), reason = %refusal.message, "refused"
        ),
        Err(e) => tracing::warn!(request_id = %s.request_id, order_no = %s.order_no, error = %e, "not settled yet"),
    }
}

/// Re-checks what the ingress validated, with this worker's settings: a message may also come
/// from a DLQ replay, or from an ingress configured differently.
fn check_shape(r: &AssetPayRequested, pay: &PaySettings) -> Result<(), Refusal> {
    let invalid = |why: String| Err(Refusal::new(Code::Validation, why));
    if r.method.asset().is_none() {
        return invalid("not an internal-asset payment".into());
    }
    if r.amount.is_zero() || r.asset_amount.is_zero() {
        return invalid("amount must be above zero".into());
    }
    if r.amount > pay.max_amount {
        return invalid(format!("amount exceeds the limit of {} per payment", pay.max_amount));
    }
    if r.method == PayMethod::Integral {
        if r.asset_amount.to_fen() % 100 != 0 {
            return invalid("integral_amount must be a whole number of points".into());
        }
        if r.asset_amount < pay.integral_min || r.asset_amount > pay.integral_max_per_order {
            return invalid(format!(
                "integral_amount must be between {} and {} points per order",
                pay.integral_min, pay.integral_max_per_order
            ));
        }
        if r.amount.checked_mul(i64::from(pay.integral_rate)) != Some(r.asset_amount) {
            return invalid(format!(
                "{} points are not {} yuan at {} points per yuan",
                r.asset_amount, r.amount, pay.integral_rate
            ));
        }
    } else if r.amount != r.asset_amount {
        return invalid("asset amount must equal the amount".into());
    }
    Ok(())
}

fn refused(refusal: Refusal) -> Answer {
    Ok(PayReplied::Refused(refusal))
}

pub(crate) fn db_error(e: &sqlx::Error) -> HandleError {
    if is_unavailable(e) {
        HandleError::Unavailable(format!("database: {e}"))
    } else if is_conflict(e) {
        HandleError::Retryable(format!("database conflict: {e}"))
    } else {
        HandleError::Retryable(format!("database: {e}"))
    }
}

fn cache_error(e: &CacheError) -> HandleError {
    match e {
        CacheError::Unavailable(_) => HandleError::Unavailable(e.to_string()),
        CacheError::Command(_) => HandleError::Retryable(e.to_string()),
    }
}

/// Runs the pay-worker until `stop`: pay requests, expiry checks, and (unless `outbox.relay`
/// is off) the outbox relay.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let db = store::pool(&settings.database)?;
    let cache = Cache::new(&settings.redis)?;
    let passwords = PasswordHasher::new(settings.pay.password_pepper()?, settings.pay.bcrypt_cost);
    let sealer = Sealer::new(settings.pay.seal_keys()?);
    let wechat = Wechat::from_settings_optional(&settings.wechat)?.map(Arc::new);
    if wechat.is_none() {
        tracing::warn!("WeChat Pay is not configured: WeChat creates are refused, expiry checks close orders locally");
    }
    let topology = Topology::new(&settings.broker);
    if !store::wait_for_schema(&db, &stop).await {
        return Ok(());
    }
    let sidecars = super::Sidecars::start(&settings, &settings.pay_worker, &db, &cache, &stop)?;
    let prepay_valid = std::time::Duration::from_secs(settings.wechat.prepay_valid_secs);
    let pay = Arc::new(PayHandler::new(
        db.clone(),
        cache,
        passwords,
        sealer,
        settings.pay.clone(),
        wechat.clone(),
        prepay_valid,
    ));
    let timeouts = Arc::new(super::timeout::TimeoutHandler::new(db, wechat));
    let pay_consumer = super::consumer_settings(PAY_REQUESTS, "payfleet-pay-worker", &settings.pay_worker);
    let timeout_consumer = super::consumer_settings(PAY_TIMEOUT, "payfleet-pay-worker-timeouts", &settings.pay_worker);
    tokio::join!(
        consumer::run(&settings.broker, &topology, &pay_consumer, pay, sidecars.broker_health.clone(), stop.clone()),
        consumer::run(
            &settings.broker,
            &topology,
            &timeout_consumer,
            timeouts,
            sidecars.broker_health.clone(),
            stop.clone()
        ),
    );
    stop.cancel();
    sidecars.finish().await;
    tracing::info!("pay-worker stopped");
    Ok(())
}
