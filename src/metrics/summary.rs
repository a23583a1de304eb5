//! A sliding-window summary collector (the prometheus crate has no summary type).

use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

/// Placeholder: quantiles over a sliding window, per label set.
#[derive(Clone)]
pub struct SlidingSummaryVec {
    desc: Vec<Desc>,
}

impl SlidingSummaryVec {
    pub fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        _quantiles: &[f64],
        _window: Duration,
    ) -> Self {
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            labels.iter().map(|s| s.to_string()).collect(),
            Default::default(),
        )
        .into_iter()
        .collect();
        SlidingSummaryVec { desc }
    }

    pub fn observe(&self, _label_values: &[&str], _value: f64) {}
}

impl Collector for SlidingSummaryVec {
    fn desc(&self) -> Vec<&Desc> {
        self.desc.iter().collect()
    }
    fn collect(&self) -> Vec<MetricFamily> {
        Vec::new()
    }
}
