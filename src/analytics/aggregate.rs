//! Accumulators of the aggregates over one window, serialisable for the state checkpoint.
//!
//! - `count_distinct` is HyperLogLog++ (the `hyperloglogplus` crate) at precision 14: a
//!   standard error of 1.04 / √16384 ≈ 0.81 % once dense; in its sparse form (small
//!   cardinalities, up to a few thousand values) it is practically exact.
//! - `pNN` is a t-digest (the `tdigest` crate, 100 centroids): exact for fewer than 100
//!   values, and within a fraction of a percent of rank near the tails beyond.
//!
//! Both sketches hash and merge deterministically, so a window replayed after a crash reports
//! the same values.

use std::hash::{BuildHasher, DefaultHasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};
use tdigest::TDigest;

use super::spec::{Aggregate, FieldValue};
use crate::event::EventRef;

/// HyperLogLog++ precision: 2^14 registers, 0.81 % standard error.
pub const HLL_PRECISION: u8 = 14;
/// Centroids kept by each t-digest.
pub const TDIGEST_SIZE: usize = 100;

/// A hasher that is the same in every process (unlike `RandomState`), so sketches restored
/// from a checkpoint go on hashing as before.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct StableHasher;

impl BuildHasher for StableHasher {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        DefaultHasher::new()
    }
}

/// The state of one aggregate in one window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Acc {
    /// Events counted.
    Count(u64),
    /// Sum and number of values.
    Sum {
        /// The sum.
        sum: f64,
        /// Values added.
        n: u64,
    },
    /// Smallest value.
    Min(Option<f64>),
    /// Largest value.
    Max(Option<f64>),
    /// Distinct values.
    Distinct(Box<HyperLogLogPlus<String, StableHasher>>),
    /// Quantile sketch and the quantile wanted.
    Percentile(Box<Digest>, f64),
}

impl Acc {
    /// An empty accumulator for `aggregate`.
    pub fn new(aggregate: &Aggregate) -> Self {
        match aggregate {
            Aggregate::Count => Self::Count(0),
            Aggregate::Sum(_) | Aggregate::Avg(_) => Self::Sum { sum: 0.0, n: 0 },
            Aggregate::Min(_) => Self::Min(None),
            Aggregate::Max(_) => Self::Max(None),
            Aggregate::CountDistinct(_) => Self::Distinct(Box::new(
                // The precision is a constant within the crate's bounds.
                HyperLogLogPlus::new(HLL_PRECISION, StableHasher)
                    .unwrap_or_else(|_| unreachable!("precision 14 is valid")),
            )),
            Aggregate::Percentile(_, q) => {
                Self::Percentile(Box::new(Digest(TDigest::new_with_size(TDIGEST_SIZE))), *q)
            }
        }
    }

    /// Adds one event.
    pub fn add<'e>(&mut self, aggregate: &Aggregate, event: impl Into<EventRef<'e>>) {
        let event = event.into();
        let number = |field: &super::spec::Field| {
            field
                .get(event)
                .and_then(FieldValue::number)
                .filter(|n| n.is_finite())
        };
        match (self, aggregate) {
            (Self::Count(n), _) => *n += 1,
            (Self::Sum { sum, n }, Aggregate::Sum(f) | Aggregate::Avg(f)) => {
                if let Some(v) = number(f) {
                    *sum += v;
                    *n += 1;
                }
            }
            (Self::Min(m), Aggregate::Min(f)) => {
                if let Some(v) = number(f) {
                    *m = Some(m.map_or(v, |m| m.min(v)));
                }
            }
            (Self::Max(m), Aggregate::Max(f)) => {
                if let Some(v) = number(f) {
                    *m = Some(m.map_or(v, |m| m.max(v)));
                }
            }
            (Self::Distinct(hll), Aggregate::CountDistinct(f)) => {
                if let Some(v) = f.get(event) {
                    hll.insert(v.text().as_str());
                }
            }
            (Self::Percentile(digest, _), Aggregate::Percentile(f, _)) => {
                if let Some(v) = number(f) {
                    digest.0.push(v);
                }
            }
            _ => {}
        }
    }

    /// The aggregate's value; `None` when it has none (a min of no values).
    pub fn value(&mut self, aggregate: &Aggregate) -> Option<f64> {
        match self {
            Self::Count(n) => Some(*n as f64),
            Self::Sum { sum, n } => match aggregate {
                Aggregate::Avg(_) => (*n > 0).then(|| *sum / *n as f64),
                _ => Some(*sum),
            },
            Self::Min(m) | Self::Max(m) => *m,
            Self::Distinct(hll) => Some(hll.count().round()),
            Self::Percentile(digest, q) => {
                digest.0.flush();
                digest.0.estimate_quantile(*q)
            }
        }
    }

    /// Folds `other` (of the same aggregate) into `self`, as when two session windows merge.
    pub fn merge(&mut self, other: Self) {
        match (self, other) {
            (Self::Count(a), Self::Count(b)) => *a += b,
            (Self::Sum { sum, n }, Self::Sum { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            (Self::Min(a), Self::Min(b)) => *a = (*a).into_iter().chain(b).reduce(f64::min),
            (Self::Max(a), Self::Max(b)) => *a = (*a).into_iter().chain(b).reduce(f64::max),
            (Self::Distinct(a), Self::Distinct(b)) => {
                // Both have HLL_PRECISION, the only way they can differ.
                let _ = a.merge(&*b);
            }
            (Self::Percentile(a, _), Self::Percentile(mut b, _)) => {
                a.0.flush();
                b.0.flush();
                a.0 = TDigest::merge_digests(vec![std::mem::take(&mut a.0), b.0]);
            }
            _ => {}
        }
    }

    /// Prepares for serialisation (the t-digest's buffer is not serialised).
    pub fn settle(&mut self) {
        if let Self::Percentile(digest, _) = self {
            digest.0.flush();
        }
    }
}

/// A t-digest that serialises as its centroids and totals (call [`Acc::settle`] first: values
/// still buffered are not written).
#[derive(Debug, Clone)]
pub struct Digest(pub TDigest);

#[derive(Serialize, Deserialize)]
struct DigestForm {
    centroids: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
    min: Option<f64>,
    max: Option<f64>,
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let d = &self.0;
        DigestForm {
            centroids: d
                .centroids()
                .iter()
                .map(|c| (c.mean(), c.weight()))
                .collect(),
            sum: d.sum(),
            count: d.count(),
            min: d.min(),
            max: d.max(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let form = DigestForm::deserialize(deserializer)?;
        let finite = form
            .centroids
            .iter()
            .all(|(m, w)| m.is_finite() && w.is_finite() && *w >= 0.0);
        if !finite || (!form.centroids.is_empty() && (form.min.is_none() || form.max.is_none())) {
            return Err(serde::de::Error::custom(
                "a t-digest needs finite centroids and, when not empty, its min and max",
            ));
        }
        let centroids = form
            .centroids
            .into_iter()
            .map(|(m, w)| tdigest::Centroid::new(m, w))
            .collect();
        Ok(Self(TDigest::new(
            centroids,
            form.sum,
            form.count,
            form.max,
            form.min,
            TDIGEST_SIZE,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::spec::Field;

    fn event(amount: f64, who: &str) -> crate::event::CloudEvent {
        serde_json::from_value(serde_json::json!({
            "specversion": "1.0", "id": "e", "source": who, "type": "t",
            "data": {"amount": amount}
        }))
        .expect("event")
    }

    #[test]
    fn every_aggregate_computes_its_value() {
        let f = || Field::parse("data.amount").expect("field");
        let aggregates = [
            Aggregate::Count,
            Aggregate::Sum(f()),
            Aggregate::Min(f()),
            Aggregate::Max(f()),
            Aggregate::Avg(f()),
            Aggregate::CountDistinct(Field::parse("source").expect("field")),
            Aggregate::Percentile(f(), 0.5),
        ];
        let mut accs: Vec<Acc> = aggregates.iter().map(Acc::new).collect();
        for (i, amount) in [5.0, 1.0, 3.0, 2.0, 4.0].into_iter().enumerate() {
            let e = event(amount, if i % 2 == 0 { "/a" } else { "/b" });
            for (acc, a) in accs.iter_mut().zip(&aggregates) {
                acc.add(a, &e);
            }
        }
        let values: Vec<Option<f64>> = accs
            .iter_mut()
            .zip(&aggregates)
            .map(|(acc, a)| acc.value(a))
            .collect();
        assert_eq!(
            values,
            [
                Some(5.0),
                Some(15.0),
                Some(1.0),
                Some(5.0),
                Some(3.0),
                Some(2.0),
                Some(3.0)
            ]
        );
    }

    #[test]
    fn sketches_survive_a_checkpoint_and_stay_within_their_error() {
        let distinct = Aggregate::CountDistinct(Field::parse("source").expect("field"));
        let p90 = Aggregate::Percentile(Field::parse("data.amount").expect("field"), 0.9);
        let (mut hll, mut digest) = (Acc::new(&distinct), Acc::new(&p90));
        for i in 0..20_000 {
            let e = event(f64::from(i % 1000), &format!("/s/{}", i % 5000));
            hll.add(&distinct, &e);
            digest.add(&p90, &e);
        }
        digest.settle();
        let mut hll: Acc =
            serde_json::from_str(&serde_json::to_string(&hll).expect("ser")).expect("de");
        let mut digest: Acc =
            serde_json::from_str(&serde_json::to_string(&digest).expect("ser")).expect("de");
        let count = hll.value(&distinct).expect("count");
        assert!((count - 5000.0).abs() / 5000.0 < 0.03, "{count}");
        let q = digest.value(&p90).expect("p90");
        assert!((q - 900.0).abs() < 15.0, "{q}");
    }
}
