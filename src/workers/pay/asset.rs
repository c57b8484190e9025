//! Internal-asset payments (balance, integral, money2): the cheap checks, then the pay
//! passwords, then one transaction for the batch (`store::payments::apply`), or one per payment
//! if that fails, so one bad message fails alone.

use std::collections::HashMap;

use super::password::PasswordTry;
use super::{Answer, PayHandler, refused};
use crate::config::PaySettings;
use crate::domain::order::check_payable;
use crate::domain::payment::Refusal;
use crate::domain::{Code, PayMethod};
use crate::mq::consumer::{HandleError, Incoming};
use crate::mq::messages::{AssetPayRequested, PayReplied, PayRequested};
use crate::store;
use crate::store::payments::{Applied, AssetPayment};

impl PayHandler {
    /// Internal-asset payments: passwords, then one transaction for them all.
    pub(super) async fn handle_assets(&self, items: &[(&Incoming<PayRequested>, &AssetPayRequested)]) -> Vec<Answer> {
        let requests: Vec<&AssetPayRequested> = items.iter().map(|(_, r)| *r).collect();
        let mut answers: Vec<Option<Answer>> =
            requests.iter().map(|r| check_shape(r, &self.pay).err().map(refused)).collect();

        // Balance payments, cheap checks first: a pay password costs a bcrypt verify, so the
        // order is read (unlocked) and an order that cannot be paid (missing, someone else's,
        // paid, closed, waiting for WeChat, another amount) is refused before any. A request
        // that already paid it (a redelivery) is answered from its receipt: its password was
        // checked when it paid, and may have changed since. The transaction checks again. With
        // `pay.balance.require_password` off there is no password to check.
        let needs_password =
            |r: &AssetPayRequested| r.method == PayMethod::Balance && self.pay.balance_needs_password();
        let candidates: Vec<usize> =
            (0..requests.len()).filter(|&i| answers[i].is_none() && needs_password(requests[i])).collect();
        let order_nos: Vec<&str> = candidates.iter().map(|&i| requests[i].order_no.as_str()).collect();
        let seen = if order_nos.is_empty() {
            HashMap::new()
        } else {
            match store::orders::read(&self.db, &order_nos).await {
                Ok(seen) => seen.into_iter().map(|o| (o.order.order_no.clone(), o)).collect::<HashMap<_, _>>(),
                Err(e) => {
                    let verdict = HandleError::from(e);
                    return items.iter().map(|_| Err(verdict.clone())).collect();
                }
            }
        };
        let mut balance: Vec<(usize, PasswordTry)> = Vec::new();
        for i in candidates {
            let r = requests[i];
            let seen = seen.get(&r.order_no);
            if seen.is_some_and(|o| o.paid_by == Some(r.request_id)) {
                continue;
            }
            match check_payable(seen.map(|o| o.order.facts()).as_ref(), r.user_id, r.amount) {
                Ok(()) => balance.push((i, r.into())),
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
                    password_required: needs_password(r),
                    daily_limit: (r.method == PayMethod::Balance)
                        .then_some(self.pay.balance.max_daily_amount)
                        .flatten(),
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

    /// Phase 2: one transaction for the batch, or one per message if that fails.
    async fn apply(&self, payments: &[AssetPayment]) -> Vec<Result<Applied, HandleError>> {
        match store::payments::apply(&self.db, payments).await {
            Ok(applied) => applied.into_iter().map(Ok).collect(),
            Err(e) if e.is_unavailable() => {
                let verdict = HandleError::from(e);
                payments.iter().map(|_| Err(verdict.clone())).collect()
            }
            Err(e) if payments.len() == 1 => vec![Err(e.into())],
            Err(e) => {
                tracing::warn!(error = %e, batch = payments.len(), "batch failed, applying its payments one by one");
                let mut out = Vec::with_capacity(payments.len());
                for payment in payments {
                    out.push(match store::payments::apply(&self.db, std::slice::from_ref(payment)).await {
                        Ok(mut applied) => Ok(applied.remove(0)),
                        Err(e) => {
                            tracing::warn!(error = %e, order_no = %payment.order_no, request_id = %payment.request_id, "payment failed");
                            Err(e.into())
                        }
                    });
                }
                out
            }
        }
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
    pay.rule(r.method).check(r.method, r.amount)?;
    if r.method == PayMethod::Integral {
        pay.integral_rules().check(r.amount, r.asset_amount).or_else(invalid)?;
    } else if r.amount != r.asset_amount {
        return invalid("asset amount must equal the amount".into());
    }
    Ok(())
}
