//! The pay-worker: consumes `pay.requests`, settles each payment in the database, and replies
//! to the waiting ingress; it also runs the expiry checks (`pay.timeout`, `timeout`).
//!
//! Internal-asset payments (`asset`) go through two phases:
//! 1. balance payments verify their pay passwords (every try counted in Redis first; locked past
//!    `pay.password_max_attempts` tries), all of the batch's bcrypt work side by side on the
//!    blocking pool; a redelivered request that already paid skips this and is answered from
//!    its receipt;
//! 2. every payment still standing is applied by `store::payments::apply` in one transaction.
//!    If that transaction fails, each message is applied alone, so one bad message fails alone.
//!
//! WeChat creates (`wechat_create`) begin the payment in the database, then call WeChat.
//! Mixed payments (`mixed`) take their internal parts in one transaction, and create their
//! WeChat part as a WeChat create does.

mod asset;
mod mixed;
mod password;
mod timeout;
mod wechat_create;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::runner::Runner;
use crate::cache::Cache;
use crate::config::{PaySettings, Settings};
use crate::domain::Code;
use crate::domain::payment::Refusal;
use crate::mq::consumer::{HandleError, Handler, Incoming, Outcome};
use crate::mq::messages::{AssetPayRequested, PayReplied, PayRequested};
use crate::mq::topology::{PAY_REQUESTS, PAY_TIMEOUT};
use crate::password::{PasswordHasher, Sealer};
use crate::store::Pool;
use crate::wechat::Wechat;

/// Settles pay requests.
struct PayHandler {
    db: Pool,
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
        PayRequested::Mixed(r) => Subject {
            request_id: r.request_id,
            order_no: &r.order_no,
            user_id: r.user_id,
            method: "mixed",
            amount: r.total,
        },
    }
}

impl Handler for PayHandler {
    type Message = PayRequested;

    async fn handle(&self, batch: &[Incoming<PayRequested>]) -> Vec<Result<Outcome, HandleError>> {
        let mut answers: Vec<Option<Answer>> = vec![None; batch.len()];
        let mut assets = Vec::new();
        let mut wechat = Vec::new();
        let mut mixed = Vec::new();
        for (i, incoming) in batch.iter().enumerate() {
            match &incoming.message {
                PayRequested::Asset(r) => assets.push((i, incoming, r)),
                PayRequested::WechatCreate(r) => wechat.push((i, r)),
                PayRequested::Mixed(r) => mixed.push((i, r)),
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
        // Mixed payments one at a time: each is its own transaction, and two for one order
        // must see each other's result.
        for (i, r) in mixed {
            answers[i] = Some(self.pay_mixed(r).await);
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
        Ok(PayReplied::Mixed(receipt)) => tracing::info!(
            request_id = %s.request_id, order_no = %s.order_no, user_id = s.user_id, method = s.method,
            amount = %s.amount, pay_no = %receipt.mixed_no, status = receipt.status.as_str(),
            pay_params = receipt.wechat_pay_info.is_some(), note = receipt.note.as_deref().unwrap_or(""), "mixed payment"
        ),
        Ok(PayReplied::Refused(refusal)) => tracing::info!(
            request_id = %s.request_id, order_no = %s.order_no, user_id = s.user_id, method = s.method,
            code = refusal.code.as_str(), reason = %refusal.message, "refused"
        ),
        Err(e) => tracing::warn!(request_id = %s.request_id, order_no = %s.order_no, error = %e, "not settled yet"),
    }
}

fn refused(refusal: Refusal) -> Answer {
    Ok(PayReplied::Refused(refusal))
}

/// Runs the pay-worker until `stop`: pay requests, expiry checks, and (unless `outbox.relay`
/// is off) the outbox relay.
pub async fn run(settings: Settings, stop: CancellationToken) -> anyhow::Result<()> {
    let passwords = PasswordHasher::new(settings.pay.password_pepper()?, settings.pay.bcrypt_cost);
    let sealer = Sealer::new(settings.pay.seal_keys()?);
    let wechat = Wechat::from_settings_optional(&settings.wechat)?.map(Arc::new);
    if wechat.is_none() {
        tracing::warn!("WeChat Pay is not configured: WeChat creates are refused, expiry checks close orders locally");
    }
    let Some(mut runner) = Runner::start("payfleet-pay-worker", &settings, &settings.pay_worker, &stop).await? else {
        return Ok(());
    };
    let prepay_valid = std::time::Duration::from_secs(settings.wechat.prepay_valid_secs);
    let (db, cache) = (runner.db.clone(), runner.cache.clone());
    let pay = PayHandler {
        db: db.clone(),
        cache,
        passwords,
        sealer,
        pay: settings.pay.clone(),
        wechat: wechat.clone(),
        prepay_valid,
    };
    runner.consume(PAY_REQUESTS, None, pay);
    runner.consume(PAY_TIMEOUT, Some("timeouts"), timeout::TimeoutHandler::new(db, wechat));
    runner.run().await;
    Ok(())
}
