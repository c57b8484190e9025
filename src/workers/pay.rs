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
use crate::config::{PaySettings, Settings};
use crate::domain::payment::Refusal;
use crate::domain::{Code, PayMethod};
use crate::ingress::health::{self, Probe};
use crate::mq::consumer::{self, BrokerHealth, ConsumerSettings, HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::{AssetPayRequested, PayReplied, PayRequested};
use crate::mq::topology::{PAY_REQUESTS, Topology};
use crate::password::PasswordHasher;
use crate::store::payments::{Applied, AssetPayment};
use crate::store::{self, is_conflict, is_unavailable};

/// Settles pay requests.
pub struct PayHandler {
    db: PgPool,
    cache: Cache,
    passwords: PasswordHasher,
    pay: PaySettings,
}

/// What becomes of one request before it is serialised into the reply.
type Answer = Result<PayReplied, HandleError>;

impl PayHandler {
    pub fn new(db: PgPool, cache: Cache, passwords: PasswordHasher, pay: PaySettings) -> PayHandler {
        PayHandler { db, cache, passwords, pay }
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
            let password = match request.sealed_password.as_deref().map(|s| self.passwords.open(s)) {
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
        let counts = match self.cache.count_password_attempts(&per_user, self.pay.password_lock()).await {
            Ok(counts) => counts,
            Err(e) => {
                out.extend(made_by.iter().flatten().map(|i| (*i, Err(Err(cache_error(&e))))));
                return out;
            }
        };
        // Each try's number within the window: the user's count before this batch, plus its
        // place among the user's tries in the batch.
        let mut next: HashMap<i64, u32> =
            per_user.iter().zip(&counts).map(|((user, k), n)| (*user, n.saturating_sub(*k) + 1)).collect();
        let numbers: Vec<u32> = tries
            .iter()
            .map(|(user, _)| {
                let slot = next.get_mut(user).expect("every user was counted");
                *slot += 1;
                *slot - 1
            })
            .collect();
        let max = self.pay.password_max_attempts;

        // bcrypt runs on the blocking pool; the batch's checks run side by side.
        let checks = futures_util::future::join_all(tries.iter().zip(&numbers).map(|((user, password), n)| {
            let hash = &hashes[user];
            async move { if *n <= max { Some(self.passwords.verify(password, hash).await) } else { None } }
        }))
        .await;
        let mut knew_it = HashSet::new();
        for ((((user_id, _), n), check), requests) in tries.iter().zip(numbers).zip(checks).zip(made_by) {
            let answer = match check {
                Some(Ok(true)) => {
                    knew_it.insert(*user_id);
                    Ok(hashes[user_id].clone())
                }
                None => {
                    tracing::info!(user_id, tries = n, "pay password locked");
                    Err(refused(Refusal::new(Code::PasswordLocked, self.locked_message())))
                }
                Some(Ok(false)) if n >= max => {
                    tracing::info!(user_id, tries = n, "wrong pay password, now locked");
                    Err(refused(Refusal::new(Code::PasswordLocked, self.locked_message())))
                }
                Some(Ok(false)) => {
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
                Some(Err(e)) => {
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

impl Handler for PayHandler {
    type Message = PayRequested;

    async fn handle(&self, batch: &[Incoming<PayRequested>]) -> Vec<Result<Outcome, HandleError>> {
        let requests: Vec<&AssetPayRequested> = batch
            .iter()
            .map(|incoming| match &incoming.message {
                PayRequested::Asset(request) => request,
            })
            .collect();
        let mut answers: Vec<Option<Answer>> =
            requests.iter().map(|r| check_shape(r, &self.pay).err().map(refused)).collect();

        // A redelivered balance request that already paid is answered from its receipt: its
        // password was checked when it paid (and may have changed since).
        let redelivered: Vec<uuid::Uuid> = batch
            .iter()
            .zip(&requests)
            .filter(|(incoming, r)| {
                r.method == PayMethod::Balance && (incoming.meta.redelivered || incoming.meta.attempt > 0)
            })
            .map(|(_, r)| r.request_id)
            .collect();
        let already_paid = if redelivered.is_empty() {
            HashSet::new()
        } else {
            match store::payments::applied_requests(&self.db, &redelivered).await {
                Ok(applied) => applied,
                Err(e) => return batch.iter().map(|_| Err(db_error(&e))).collect(),
            }
        };
        let balance: Vec<(usize, &AssetPayRequested)> = requests
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                answers[*i].is_none() && r.method == PayMethod::Balance && !already_paid.contains(&r.request_id)
            })
            .map(|(i, r)| (i, *r))
            .collect();
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
        let answers: Vec<Answer> = answers.into_iter().map(|a| a.expect("every request has an answer")).collect();

        self.remember_refusals(&requests, &answers).await;
        for (r, answer) in requests.iter().zip(&answers) {
            log_answer(r, answer);
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
    /// Keeps each refusal where the payer's status query finds it: after a 202 the refusal
    /// never reached them. Refusals about orders that are not theirs, or already paid, say
    /// nothing the status does not.
    async fn remember_refusals(&self, requests: &[&AssetPayRequested], answers: &[Answer]) {
        let refusals: Vec<(&str, i64, &Refusal)> = requests
            .iter()
            .zip(answers)
            .filter_map(|(r, answer)| match answer {
                Ok(PayReplied::Refused(refusal)) if !matches!(refusal.code, Code::NotFound | Code::OrderPaid) => {
                    Some((r.order_no.as_str(), r.user_id, refusal))
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

fn log_answer(r: &AssetPayRequested, answer: &Answer) {
    match answer {
        Ok(PayReplied::Paid(receipt)) => tracing::info!(
            request_id = %r.request_id, order_no = %r.order_no, user_id = r.user_id, method = r.method.as_str(),
            amount = %r.amount, pay_no = %receipt.pay_no, remaining = %receipt.remaining, "paid"
        ),
        Ok(PayReplied::Refused(refusal)) => tracing::info!(
            request_id = %r.request_id, order_no = %r.order_no, user_id = r.user_id, method = r.method.as_str(),
            code = refusal.code.as_str(), reason = %refusal.message, "refused"
        ),
        Err(e) => tracing::warn!(request_id = %r.request_id, order_no = %r.order_no, error = %e, "not settled yet"),
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

fn db_error(e: &sqlx::Error) -> HandleError {
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

/// Runs the pay-worker (and, unless `outbox.relay` is off, the outbox relay) until `stop`.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let db = store::pool(&settings.database)?;
    let cache = Cache::new(&settings.redis)?;
    let passwords = PasswordHasher::new(settings.pay.password_pepper()?, settings.pay.bcrypt_cost);
    let topology = Topology::new(&settings.broker);
    let broker_health = BrokerHealth::default();
    if !store::wait_for_schema(&db, &stop).await {
        return Ok(());
    }

    let mut tasks = tokio::task::JoinSet::new();
    if settings.outbox.relay {
        tasks.spawn(super::relay::run(db.clone(), settings.broker.clone(), settings.outbox.clone(), stop.clone()));
    }
    if !settings.pay_worker.health_listen.is_empty() {
        let addr =
            settings.pay_worker.health_listen.parse().map_err(|e| anyhow::anyhow!("pay_worker.health_listen: {e}"))?;
        let up = broker_health.clone();
        let probe = Probe { db: db.clone(), cache: cache.clone(), broker: Arc::new(move || up.is_connected()) };
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = health::serve(addr, probe, stop).await {
                tracing::error!(error = %e, "health endpoint failed");
            }
        });
    }
    let consumer_settings = ConsumerSettings {
        queue: PAY_REQUESTS,
        name: "payfleet-pay-worker".into(),
        prefetch: settings.pay_worker.prefetch,
        concurrency: settings.pay_worker.concurrency,
        batch_max: settings.pay_worker.batch_max,
    };
    let handler = Arc::new(PayHandler::new(db, cache, passwords, settings.pay.clone()));
    consumer::run(&settings.broker, &topology, &consumer_settings, handler, broker_health, stop.clone()).await;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("pay-worker stopped");
    Ok(())
}
