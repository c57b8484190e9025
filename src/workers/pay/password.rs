//! Pay-password checks for a batch's balance payments: every try counted in Redis before it is
//! verified, so concurrent guesses cannot outrun the lock; bcrypt on the blocking pool.

use std::collections::{HashMap, HashSet};

use super::{Answer, PayHandler, refused};
use crate::domain::Code;
use crate::domain::Money;
use crate::domain::mixed::terms;
use crate::domain::payment::Refusal;
use crate::mq::consumer::HandleError;
use crate::mq::messages::{AssetPayRequested, MixedPayRequested};
use crate::password::{BALANCE_TERMS, SealedFor};
use crate::store;

/// A pay password to check: the request it was sealed for, and the sealed text (None: the
/// request came without one).
pub(super) struct PasswordTry<'a> {
    pub user_id: i64,
    pub request_id: uuid::Uuid,
    pub order_no: &'a str,
    pub amount: Money,
    pub terms: String,
    pub sealed: Option<&'a str>,
}

impl PasswordTry<'_> {
    fn sealed_for(&self) -> SealedFor<'_> {
        SealedFor {
            user_id: self.user_id,
            request_id: self.request_id,
            order_no: self.order_no,
            amount: self.amount,
            terms: &self.terms,
        }
    }
}

impl<'a> From<&'a AssetPayRequested> for PasswordTry<'a> {
    fn from(r: &'a AssetPayRequested) -> PasswordTry<'a> {
        PasswordTry {
            user_id: r.user_id,
            request_id: r.request_id,
            order_no: &r.order_no,
            amount: r.amount,
            terms: BALANCE_TERMS.to_owned(),
            sealed: r.sealed_password.as_deref(),
        }
    }
}

impl<'a> From<&'a MixedPayRequested> for PasswordTry<'a> {
    /// Sealed for the whole payment and its parts.
    fn from(r: &'a MixedPayRequested) -> PasswordTry<'a> {
        PasswordTry {
            user_id: r.user_id,
            request_id: r.request_id,
            order_no: &r.order_no,
            amount: r.total,
            terms: terms(&r.parts),
            sealed: r.sealed_password.as_deref(),
        }
    }
}

impl PayHandler {
    /// Phase 1 for the batch's balance payments: `Ok(hash)` for a verified password, or the
    /// answer for a refused one.
    ///
    /// Every distinct password tried is counted before it is verified (INCRBY, atomic across
    /// batches and workers), so a burst of concurrent guesses cannot outrun the lock: past
    /// `pay.password_max_attempts` within the window a guess is refused unverified. The same
    /// password sent by several requests of a batch (a user paying several orders) is one try,
    /// verified once; a right password clears the count.
    pub(super) async fn check_passwords(
        &self,
        requests: &[(usize, PasswordTry<'_>)],
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
            Err(e) => {
                let verdict = HandleError::from(e);
                return requests.iter().map(|(i, _)| (*i, Err(Err(verdict.clone())))).collect();
            }
        };

        // The distinct (user, password) tries of the batch, in order of first appearance, and
        // which requests made each.
        let mut tries: Vec<(i64, String)> = Vec::new();
        let mut made_by: Vec<Vec<usize>> = Vec::new();
        for (i, request) in requests {
            let user_id = request.user_id;
            if !hashes.contains_key(&user_id) {
                let refusal = Refusal::new(Code::PasswordNotSet, "set a pay password before paying with balance");
                out.insert(*i, Err(refused(refusal)));
                continue;
            }
            let opened = request.sealed.map(|s| self.sealer.open(&request.sealed_for(), s));
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
            match tries.iter().position(|(u, p)| *u == user_id && *p == password) {
                Some(t) => made_by[t].push(*i),
                None => {
                    tries.push((user_id, password));
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
                    let verdict = HandleError::from(e);
                    out.extend(made_by.iter().flatten().map(|i| (*i, Err(Err(verdict.clone())))));
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
}
