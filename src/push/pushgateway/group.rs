//! What a push carries: the grouping key and its URL path, and the text-format body.

use std::collections::BTreeMap;

use base64::Engine;

use crate::exposition::encode::Encoder;
use crate::exposition::names::is_valid_label_name;
use crate::exposition::snapshot::{Family, Snapshot};

use super::PushgatewayError;

/// Families the gateway adds to every group itself; a pushed one would be overwritten.
pub(crate) const RESERVED_FAMILIES: [&str; 2] = ["push_time_seconds", "push_failure_time_seconds"];

/// `job` plus further grouping labels: which group of the gateway a push replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupingKey {
    job: String,
    labels: BTreeMap<String, String>,
}

impl GroupingKey {
    /// Refuses what the gateway would reject or misread: an empty job, an invalid label
    /// name, `job` among the grouping labels.
    pub fn new(
        job: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<GroupingKey, PushgatewayError> {
        if job.is_empty() {
            return Err(PushgatewayError::EmptyJob);
        }
        for name in labels.keys() {
            if name == "job" {
                return Err(PushgatewayError::JobInGrouping);
            }
            if !is_valid_label_name(name) {
                return Err(PushgatewayError::InvalidLabelName(name.clone()));
            }
        }
        Ok(GroupingKey {
            job: job.to_string(),
            labels,
        })
    }

    /// `/metrics/job/<job>{/<label>/<value>}`: job first, then labels in name order.
    pub(crate) fn path(&self) -> String {
        let mut path = String::from("/metrics");
        push_segment(&mut path, "job", &self.job);
        for (name, value) in &self.labels {
            push_segment(&mut path, name, value);
        }
        path
    }

    /// `job` and the grouping labels, in that order.
    pub(crate) fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        std::iter::once(("job", self.job.as_str()))
            .chain(self.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    /// Refuses a metric that carries `job` or a grouping label: the gateway would
    /// silently overwrite it with the key's value.
    pub(crate) fn check_labels(&self, family: &Family) -> Result<(), PushgatewayError> {
        for labels in &family.labels {
            if let Some((name, _)) = labels
                .iter()
                .find(|(name, _)| self.labels().any(|(n, _)| n == &**name))
            {
                return Err(PushgatewayError::LabelCollision {
                    family: family.name.clone(),
                    label: name.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// Appends `/<name>/<value>`. A value with `/`, or an empty one, cannot travel as a path
/// segment (the router would split or drop it): it goes as `<name>@base64/<url-safe>`,
/// `=` for empty. Others are percent-encoded.
fn push_segment(path: &mut String, name: &str, value: &str) {
    path.push('/');
    path.push_str(name);
    if value.is_empty() {
        path.push_str("@base64/=");
    } else if value.contains('/') {
        path.push_str("@base64/");
        path.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value));
    } else {
        path.push('/');
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                path.push(byte as char);
            } else {
                path.push_str(&format!("%{byte:02X}"));
            }
        }
    }
}

/// The text-format body of a push, written by the same encoder as `/metrics`: no
/// timestamps (a snapshot has none), LF endings, a final newline.
///
/// Refuses a metric that carries `job` or a grouping label, and the gateway's own
/// `push_time_seconds`/`push_failure_time_seconds`. Families without metrics are skipped.
pub(crate) fn render(snapshot: &Snapshot, key: &GroupingKey) -> Result<String, PushgatewayError> {
    let mut encoder = Encoder::default();
    let mut body = String::new();
    for family in pushed(snapshot, key)? {
        encoder.family(family, &mut body);
    }
    Ok(body)
}

/// The same families as [`render`], as delimited protobuf `MetricFamily` messages: classic
/// and native buckets, and exemplars.
pub(crate) fn render_protobuf(
    snapshot: &Snapshot,
    key: &GroupingKey,
) -> Result<Vec<u8>, PushgatewayError> {
    let mut body = Vec::new();
    crate::exposition::protobuf::encode_families(pushed(snapshot, key)?, &mut body);
    Ok(body)
}

/// The families a push carries, checked.
fn pushed<'a>(
    snapshot: &'a Snapshot,
    key: &GroupingKey,
) -> Result<Vec<&'a Family>, PushgatewayError> {
    let mut out = Vec::with_capacity(snapshot.families.len());
    for family in &snapshot.families {
        if family.labels.is_empty() {
            continue;
        }
        if RESERVED_FAMILIES.contains(&family.name.as_str()) {
            return Err(PushgatewayError::ReservedFamily(family.name.clone()));
        }
        key.check_labels(family)?;
        out.push(family);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::parse::parse;
    use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

    fn key(job: &str, labels: &[(&str, &str)]) -> Result<GroupingKey, PushgatewayError> {
        GroupingKey::new(
            job,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn gauge_family(name: &str, labels: &[(&str, &str)], value: f64) -> MetricFamily {
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::from_gauge(g);
        m.set_label(
            labels
                .iter()
                .map(|(n, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(n.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help("help".to_string());
        mf.set_field_type(MetricType::GAUGE);
        mf.set_metric(vec![m]);
        mf
    }

    /// The body of the crate's families, read the way the metrics registry is read.
    fn body_of(families: Vec<MetricFamily>, key: &GroupingKey) -> Result<String, PushgatewayError> {
        render(&Snapshot::from_families(&families), key)
    }

    #[test]
    fn path_has_job_first_then_labels_in_name_order() {
        let k = key("batch", &[("zone", "eu"), ("instance", "host-a:9100")]).unwrap();
        assert_eq!(
            k.path(),
            "/metrics/job/batch/instance/host-a%3A9100/zone/eu"
        );
    }

    #[test]
    fn slash_and_empty_values_go_as_base64_others_percent_encoded() {
        let k = key(
            "job/with/slash",
            &[("path", "/var/tmp"), ("empty", ""), ("name", "Προ μ?#%")],
        )
        .unwrap();
        assert_eq!(
            k.path(),
            "/metrics/job@base64/am9iL3dpdGgvc2xhc2g/empty@base64/=/name/%CE%A0%CF%81%CE%BF%20%CE%BC%3F%23%25/path@base64/L3Zhci90bXA"
        );
        // The URL-safe alphabet: standard base64 of "/??>" is "Lz8/Pg==".
        let k = key("j", &[("v", "/??>")]).unwrap();
        assert_eq!(k.path(), "/metrics/job/j/v@base64/Lz8_Pg");
    }

    #[test]
    fn empty_job_bad_label_names_and_job_label_are_refused() {
        assert!(matches!(key("", &[]), Err(PushgatewayError::EmptyJob)));
        assert!(matches!(
            key("j", &[("job", "x")]),
            Err(PushgatewayError::JobInGrouping)
        ));
        for bad in ["1x", "a-b", "__reserved", ""] {
            let e = key("j", &[(bad, "x")]).unwrap_err();
            assert!(
                matches!(e, PushgatewayError::InvalidLabelName(_)),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn body_is_text_format_with_lf_final_newline_and_no_timestamps() {
        let mut family = gauge_family("temp", &[("room", "a")], 21.5);
        family.mut_metric()[0].set_timestamp_ms(1_700_000_000_000);
        let body = body_of(vec![family], &key("j", &[]).unwrap()).unwrap();
        assert_eq!(
            body,
            "# HELP temp help\n# TYPE temp gauge\ntemp{room=\"a\"} 21.5\n"
        );
        assert!(!body.contains('\r'));
    }

    #[test]
    fn untyped_families_render_with_the_untyped_type_line() {
        let snapshot = parse("# HELP u x\nu{a=\"1\"} 3\ng 2\n").unwrap();
        let body = render(&snapshot, &key("j", &[]).unwrap()).unwrap();
        // Families in name order, as in every snapshot.
        assert_eq!(
            body,
            "# TYPE g untyped\ng 2\n# HELP u x\n# TYPE u untyped\nu{a=\"1\"} 3\n"
        );
    }

    #[test]
    fn metrics_carrying_job_or_a_grouping_label_are_refused() {
        let k = key("j", &[("instance", "a")]).unwrap();
        for label in ["job", "instance"] {
            let e = body_of(vec![gauge_family("m", &[(label, "x")], 1.0)], &k).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("metric `m` carries the label `{label}`")),
                "{e}"
            );
        }
        assert!(body_of(vec![gauge_family("m", &[("other", "x")], 1.0)], &k).is_ok());
        let e = body_of(vec![gauge_family("push_time_seconds", &[], 1.0)], &k).unwrap_err();
        assert!(matches!(e, PushgatewayError::ReservedFamily(_)), "{e}");
    }

    #[test]
    fn empty_families_are_skipped() {
        let mut empty = gauge_family("e", &[], 0.0);
        empty.set_metric(vec![]);
        assert_eq!(body_of(vec![empty], &key("j", &[]).unwrap()).unwrap(), "");
    }

    #[test]
    fn samples_are_counted_per_text_line() {
        let snapshot = parse(
            "a 1\nb 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n\
             # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
        )
        .unwrap();
        let samples = snapshot.sample_count() as u64;
        let body = render(&snapshot, &key("j", &[]).unwrap()).unwrap();
        let lines = body.lines().filter(|l| !l.starts_with('#')).count() as u64;
        assert_eq!(samples, lines);
        assert_eq!(lines, 2 + 4 + 3);
    }
}
