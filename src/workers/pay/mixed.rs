//! Mixed payments: the parts checked against the payment rules, the pay password verified when
//! a balance part needs it, every internal part taken in one transaction
//! (`store::mixed::pay`), then, for a WeChat part, its prepay, answered as pay params beside
//! the held parts.

use super::{Answer, PayHandler, refused};
use crate::domain::mixed::{MixedReceipt, check_parts};
use crate::domain::order::check_payable;
use crate::domain::payment::Refusal;
use crate::domain::{Code, PayMethod, PaymentStatus};
use crate::mq::consumer::HandleError;
use crate::mq::messages::{MixedPayRequested, PayReplied, WechatCreateRequested};
use crate::store;
use crate::store::mixed::{MixedApplied, MixedPayment};
use crate::store::wechat::ChannelVersion;

impl PayHandler {
    pub(super) async fn pay_mixed(&self, r: &MixedPayRequested) -> Answer {
        // A redelivery is answered from what its first delivery made, before any check: this
        // worker's settings may differ from the one that took the money.
        match store::mixed::find_by_request(&self.db, r.request_id).await {
            Ok(Some(receipt)) => return self.answer(r, receipt).await,
            Ok(None) => {}
            Err(e) => return Err(e.into()),
        }
        if let Err(refusal) = self.check_mixed(r) {
            return refused(refusal);
        }
        let wechat = match (&r.wechat, &self.wechat) {
            (None, _) => None,
            (Some(payer), Some(wechat)) => {
                Some((payer, ChannelVersion { api_version: wechat.api_version(), sign_type: wechat.v2_sign_type() }))
            }
            (Some(_), None) => {
                return refused(Refusal::new(Code::SystemError, "WeChat Pay is not configured on this fleet"));
            }
        };
        let balance = r.parts.iter().find(|p| p.method == PayMethod::Balance);
        let password_required = balance.is_some() && self.pay.balance_needs_password();
        let verified_hash = if password_required {
            match self.verify_mixed_password(r).await {
                Ok(hash) => hash,
                Err(answer) => return answer,
            }
        } else {
            None
        };
        let payment = MixedPayment {
            request_id: r.request_id,
            user_id: r.user_id,
            order_no: &r.order_no,
            total: r.total,
            parts: &r.parts,
            verified_hash,
            password_required,
            daily_limit: balance.and(self.pay.balance.max_daily_amount),
            wechat,
        };
        let receipt = match store::mixed::pay(&self.db, &payment).await {
            Ok(MixedApplied::Made(receipt)) => receipt,
            Ok(MixedApplied::Refused(refusal)) => return refused(refusal),
            Ok(MixedApplied::Stale) => return Err(HandleError::Retryable("pay password changed while paying".into())),
            Err(e) => return Err(e.into()),
        };
        self.answer(r, receipt).await
    }

    /// The answer for a mixed payment as it stands: paid, held (with the WeChat part's pay
    /// params), or closed with its holds returned.
    async fn answer(&self, r: &MixedPayRequested, receipt: MixedReceipt) -> Answer {
        match receipt.status {
            PaymentStatus::Paying => self.with_pay_params(r, receipt).await,
            PaymentStatus::Closed => refused(closed()),
            _ => Ok(PayReplied::Mixed(receipt)),
        }
    }

    /// Re-checks what the ingress validated, with this worker's settings.
    fn check_mixed(&self, r: &MixedPayRequested) -> Result<(), Refusal> {
        let invalid = |why: &str| Err(Refusal::new(Code::Validation, why));
        if r.total > self.pay.max_amount {
            return invalid("total_amount exceeds the limit per payment");
        }
        check_parts(r.total, &r.parts, |method| self.pay.rule(method), &self.pay.integral_rules())?;
        let has_wechat = r.parts.iter().any(|p| p.method == PayMethod::Wechat);
        if has_wechat != r.wechat.is_some() {
            return invalid("a WeChat part needs its payer (trade_type, openid), and only a WeChat part");
        }
        Ok(())
    }

    /// The pay password of a mixed payment with a balance part: `Ok(Some(hash))` once verified;
    /// `Ok(None)` without a check when the order is paying or paid already (perhaps by this very
    /// request, redelivered: the transaction answers that without a password, and refuses
    /// anything else before it would need one).
    async fn verify_mixed_password(&self, r: &MixedPayRequested) -> Result<Option<String>, Answer> {
        let seen = store::orders::read(&self.db, &[r.order_no.as_str()]).await.map_err(|e| Err(e.into()))?.pop();
        match check_payable(seen.map(|o| o.order).as_ref().map(|o| o.facts()).as_ref(), r.user_id, r.total) {
            Ok(()) => {}
            Err(refusal) if matches!(refusal.code, Code::OrderPaying | Code::OrderPaid) => return Ok(None),
            Err(refusal) => return Err(refused(refusal)),
        }
        match self.check_passwords(&[(0, r.into())]).await.remove(&0) {
            Some(Ok(hash)) => Ok(Some(hash)),
            Some(Err(answer)) => Err(answer),
            None => Err(Err(HandleError::Permanent("the pay password check gave no answer".into()))),
        }
    }

    /// The WeChat part's pay params, through the WeChat create (which reuses a valid prepay). The
    /// internal parts are held whatever WeChat answers, so a failure is told, not raised: the
    /// payer can fetch the params again, or cancel and get the holds back.
    async fn with_pay_params(&self, r: &MixedPayRequested, mut receipt: MixedReceipt) -> Answer {
        let (Some(part), Some(payer)) = (receipt.wechat(), &r.wechat) else {
            return Ok(PayReplied::Mixed(receipt));
        };
        let create = WechatCreateRequested {
            request_id: r.request_id,
            user_id: r.user_id,
            order_no: r.order_no.clone(),
            amount: part.amount,
            trade_type: payer.trade_type,
            openid: payer.openid.clone(),
            client_ip: payer.client_ip.clone(),
            requested_at: r.requested_at,
        };
        let later = format!(
            "the other parts stay held: get pay params with POST /api/v1/payment/{0}/retry, or cancel with POST /api/v1/payment/{0}/cancel to get them back",
            r.order_no
        );
        match self.create_wechat(&create).await {
            Ok(PayReplied::Prepaid(prepaid)) => receipt.wechat_pay_info = Some(prepaid.pay_params),
            Ok(PayReplied::Refused(refusal)) => {
                // The order stopped waiting for the part (it closed, and the holds went back, or
                // WeChat took the money already): answer the payment as it is now.
                let now = match store::mixed::find(&self.db, &receipt.mixed_no).await {
                    Ok(now) => now,
                    Err(e) => return Err(e.into()),
                };
                if now.status == PaymentStatus::Closed {
                    return refused(closed());
                }
                receipt = now;
                receipt.note = Some(format!("WeChat part: {} ({}); {later}", refusal.message, refusal.code.as_str()));
            }
            Ok(other) => {
                tracing::error!(order_no = %r.order_no, reply = ?other, "a WeChat create answered neither params nor a refusal");
                receipt.note = Some(format!("WeChat did not give pay params; {later}"));
            }
            Err(e) => {
                tracing::warn!(order_no = %r.order_no, error = %e, "no pay params for a mixed payment's WeChat part yet");
                receipt.note = Some(format!("WeChat did not answer; {later}"));
            }
        }
        Ok(PayReplied::Mixed(receipt))
    }
}

fn closed() -> Refusal {
    Refusal::new(Code::OrderClosed, "this mixed payment closed unpaid and everything it held was returned")
}
