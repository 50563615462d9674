//! A consumed record as every stage sees it ([`Input`]), and a record to publish ([`OutRecord`]).

/// One consumed record, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Record headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Broker timestamp in milliseconds.
    pub timestamp_ms: Option<i64>,
}

impl<'a> Input<'a> {
    /// The first header named `name`, if its value is UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The last header named `name`, read lossily (for values written by other tools).
    pub fn last_header_lossy(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Key, value and header bytes together, as checked against `max_event_bytes`.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.key.map_or(0, <[u8]>::len) + self.value.map_or(0, <[u8]>::len) + headers
    }

    /// `topic/partition/offset`.
    pub fn coordinates(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// A record to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct OutRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` lets the producer's partitioner choose by key.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
}
