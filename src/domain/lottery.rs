//! Lottery draws, with no I/O: an ichiban box drawn without replacement, an infinite pool drawn
//! by weight. The follow-up worker calls them with a cryptographically secure generator (a
//! payer must not be able to predict the next prize from the last ones); tests pass a seeded one.

use rand::{CryptoRng, RngExt};

use super::GoodsKind;

/// A prize as goods are created with it (`--prize "name:count"`): for ichiban goods the count is
/// how many the box holds, for infinite goods the prize's weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrizeSpec {
    pub name: String,
    pub count: u32,
}

impl PrizeSpec {
    /// `name:count`, the name trimmed (it may hold ':' itself: the count is after the last one).
    pub fn parse(text: &str) -> Result<PrizeSpec, String> {
        let (name, count) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not name:count"))?;
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(format!("{text:?}: a prize's name is 1 to 100 characters"));
        }
        match count.trim().parse::<u32>() {
            Ok(count) if (1..=1_000_000).contains(&count) => Ok(PrizeSpec { name: name.to_owned(), count }),
            _ => Err(format!("{text:?}: the count after ':' is a whole number from 1 to 1000000")),
        }
    }
}

/// Refuses a prize list goods of `kind` cannot be drawn from: none at all, or a name twice.
pub fn check_prizes(kind: GoodsKind, prizes: &[PrizeSpec]) -> Result<(), String> {
    if prizes.is_empty() {
        let what = match kind {
            GoodsKind::Ichiban => "name:quantity",
            GoodsKind::Infinite => "name:weight",
        };
        return Err(format!("{} goods need at least one prize (--prize \"{what}\")", kind.as_str()));
    }
    for (i, p) in prizes.iter().enumerate() {
        if prizes[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("prize {:?} is named twice", p.name));
        }
    }
    Ok(())
}

/// Why a box cannot serve an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unservable {
    /// Fewer prizes are left in the box than the order draws.
    #[error("{left} prizes are left, the order draws {asked}")]
    SoldOut { left: u64, asked: u32 },
    /// The goods have no prizes to draw from.
    #[error("the goods have no prizes")]
    NoPrizes,
}

/// `num` draws without replacement from a box holding `remaining[i]` of prize `i`: each draw
/// takes one of the prizes still in the box, every one of them equally likely. Answers the
/// prizes' indices in draw order; never more of a prize than the box holds.
pub fn draw_ichiban<R: CryptoRng + ?Sized>(remaining: &[u32], num: u32, rng: &mut R) -> Result<Vec<usize>, Unservable> {
    let mut left: Vec<u64> = remaining.iter().map(|&n| u64::from(n)).collect();
    let mut total: u64 = left.iter().sum();
    if total == 0 && num > 0 {
        return Err(if remaining.is_empty() {
            Unservable::NoPrizes
        } else {
            Unservable::SoldOut { left: 0, asked: num }
        });
    }
    if total < u64::from(num) {
        return Err(Unservable::SoldOut { left: total, asked: num });
    }
    let mut drawn = Vec::with_capacity(num as usize);
    for _ in 0..num {
        let i = pick(&left, rng.random_range(0..total));
        left[i] -= 1;
        total -= 1;
        drawn.push(i);
    }
    Ok(drawn)
}

/// `num` draws with replacement from a pool where prize `i` has weight `weights[i]`: each draw
/// is prize `i` with probability `weights[i] / Σ weights`, whatever was drawn before.
pub fn draw_weighted<R: CryptoRng + ?Sized>(weights: &[u32], num: u32, rng: &mut R) -> Result<Vec<usize>, Unservable> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w)).collect();
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return Err(Unservable::NoPrizes);
    }
    Ok((0..num).map(|_| pick(&weights, rng.random_range(0..total))).collect())
}

/// The index whose share of `0..Σ counts` holds `ticket` (counts laid end to end).
fn pick(counts: &[u64], mut ticket: u64) -> usize {
    for (i, &n) in counts.iter().enumerate() {
        if ticket < n {
            return i;
        }
        ticket -= n;
    }
    unreachable!("the ticket is below the sum of the counts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn an_exhaustive_box_issues_every_prize_exactly_its_stock() {
        let stock = [1, 3, 10, 86];
        let mut rng = StdRng::seed_from_u64(7);
        let drawn = draw_ichiban(&stock, 100, &mut rng).unwrap();
        let mut issued = [0u32; 4];
        for i in drawn {
            issued[i] += 1;
        }
        assert_eq!(issued, stock);
        assert_eq!(
            draw_ichiban(&stock, 101, &mut rng),
            Err(Unservable::SoldOut { left: 100, asked: 101 }),
            "one more than the box holds is refused whole"
        );
        assert_eq!(draw_ichiban(&[0, 0], 1, &mut rng), Err(Unservable::SoldOut { left: 0, asked: 1 }));
        assert_eq!(draw_ichiban(&[], 1, &mut rng), Err(Unservable::NoPrizes));
        assert_eq!(draw_weighted(&[], 1, &mut rng), Err(Unservable::NoPrizes));
    }

    /// Pearson's chi-square over many weighted draws: the counts must fit the weights. With 3
    /// degrees of freedom, 16.27 is the 0.999 quantile; the seed is fixed, so the test is
    /// repeatable, and a wrong mapping from ticket to prize (an off-by-one, a weight ignored)
    /// lands far above it.
    #[test]
    fn weighted_draws_follow_the_weights() {
        let weights = [1u32, 9, 30, 60];
        let n = 200_000u32;
        let mut rng = StdRng::seed_from_u64(2026);
        let mut counts = [0u64; 4];
        for i in draw_weighted(&weights, n, &mut rng).unwrap() {
            counts[i] += 1;
        }
        let total: u32 = weights.iter().sum();
        let chi2: f64 = counts
            .iter()
            .zip(weights)
            .map(|(&seen, w)| {
                let expected = f64::from(n) * f64::from(w) / f64::from(total);
                (seen as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 16.27, "chi-square {chi2:.2} over {counts:?}: the draws do not follow the weights {weights:?}");
        // And the test can fail: the same counts against other weights are far off.
        let wrong: f64 = counts
            .iter()
            .map(|&seen| {
                let expected = f64::from(n) / 4.0;
                (seen as f64 - expected).powi(2) / expected
            })
            .sum();
        assert!(wrong > 1000.0);
    }

    /// The first draw of a box is each remaining ticket with equal chance: a box of 1 A and 3 B
    /// gives A a quarter of the time.
    #[test]
    fn every_ticket_left_in_a_box_is_equally_likely() {
        let mut rng = StdRng::seed_from_u64(11);
        let n = 40_000;
        let a = (0..n).filter(|_| draw_ichiban(&[1, 3], 1, &mut rng).unwrap()[0] == 0).count();
        let share = a as f64 / f64::from(n);
        assert!((share - 0.25).abs() < 0.015, "A drawn {share:.3} of the time, expected 0.25");
    }

    #[test]
    fn prizes_are_name_colon_count() {
        assert_eq!(PrizeSpec::parse("A賞 figure:2"), Ok(PrizeSpec { name: "A賞 figure".into(), count: 2 }));
        assert_eq!(PrizeSpec::parse("ratio 1:2:30").unwrap(), PrizeSpec { name: "ratio 1:2".into(), count: 30 });
        for bad in ["A", ":3", "A:0", "A:-1", "A:x", "A:1000001"] {
            assert!(PrizeSpec::parse(bad).is_err(), "{bad:?}");
        }
        let a = PrizeSpec::parse("A:1").unwrap();
        assert!(check_prizes(GoodsKind::Ichiban, &[]).is_err());
        assert!(check_prizes(GoodsKind::Infinite, &[a.clone(), a.clone()]).is_err());
        assert!(check_prizes(GoodsKind::Infinite, &[a]).is_ok());
    }

    proptest! {
        #[test]
        fn a_box_never_issues_more_than_it_holds(stock in proptest::collection::vec(0u32..20, 0..6), num in 0u32..80, seed: u64) {
            let mut rng = StdRng::seed_from_u64(seed);
            let total: u32 = stock.iter().sum();
            match draw_ichiban(&stock, num, &mut rng) {
                Ok(drawn) => {
                    prop_assert!(num <= total);
                    prop_assert_eq!(drawn.len(), num as usize);
                    for (i, &held) in stock.iter().enumerate() {
                        prop_assert!(drawn.iter().filter(|&&d| d == i).count() <= held as usize);
                    }
                }
                Err(_) => prop_assert!(num > total),
            }
        }
    }
}
