//! The remote-write 1.0 messages of `proto/remote_write.proto`, as prost types derived by
//! hand (no build script, no protoc): the tags below are the field numbers of the `.proto`
//! file, and must change with it.
//!
//! The pusher writes these bytes itself (`encode.rs`, to avoid one `String` per label);
//! these types are the reference it is tested against, and what a receiver (the tests'
//! in-process one) decodes with.

/// The body of one POST, before snappy block compression. Fields 2 and 3 are reserved.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// One series: its complete, sorted label set (with `__name__`) and its samples.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}
