//! BuildKit's cache config (`application/vnd.buildkit.cacheconfig.v0`): the records of cache
//! keys linked by their inputs, and the layers their results are made of. Read from untrusted
//! bytes (a registry, a directory someone else wrote), so everything is checked before use:
//! every index in range, no loops through links or layer parents, digests well formed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::BkCacheError;

/// The media type of the config blob.
pub const MEDIA_TYPE: &str = "application/vnd.buildkit.cacheconfig.v0";

/// Bounds on what one config may hold (buildkitd's configs for large builds have a few
/// thousand records).
const MAX_RECORDS: usize = 1 << 20;
const MAX_LAYERS: usize = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blob: String,
    /// The layer below (-1: none). Go leaves a 0 out of the JSON.
    #[serde(rename = "parent", default, skip_serializing_if = "is_zero")]
    pub parent: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<LayerAnnotations>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerAnnotations {
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(rename = "diffID", default, skip_serializing_if = "String::is_empty")]
    pub diff_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Results: each a layer, loaded with all its parents.
    #[serde(rename = "layers", default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<RecordResult>,
    /// Results given as explicit layer lists.
    #[serde(rename = "chains", default, skip_serializing_if = "Vec::is_empty")]
    pub chained: Vec<ChainedResult>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    /// Per input of the op: the records that input's key may be, with a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Vec<Input>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecordResult {
    pub layer: i64,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChainedResult {
    pub layers: Vec<i64>,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Input {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    pub link: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn bad(what: String) -> BkCacheError {
    BkCacheError::Config(what)
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl CacheConfig {
    /// Parses and checks a config blob.
    pub fn parse(bytes: &[u8]) -> Result<CacheConfig, BkCacheError> {
        let c: CacheConfig =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a cache config: {e}")))?;
        c.check()?;
        Ok(c)
    }

    fn check(&self) -> Result<(), BkCacheError> {
        if self.records.len() > MAX_RECORDS || self.layers.len() > MAX_LAYERS {
            return Err(bad(format!(
                "{} records and {} layers is more than a cache config may hold",
                self.records.len(),
                self.layers.len()
            )));
        }
        let nl = self.layers.len() as i64;
        for (i, l) in self.layers.iter().enumerate() {
            if !is_sha256(&l.blob) {
                return Err(bad(format!(
                    "layer {i}: blob {:?} is not a sha256 digest",
                    l.blob
                )));
            }
            if l.parent < -1 || l.parent >= nl {
                return Err(bad(format!("layer {i}: parent {} out of range", l.parent)));
            }
            if let Some(a) = &l.annotations
                && !a.diff_id.is_empty()
                && !is_sha256(&a.diff_id)
            {
                return Err(bad(format!(
                    "layer {i}: diffID {:?} is not a sha256 digest",
                    a.diff_id
                )));
            }
        }
        // Parent chains end: walking up from any layer meets -1 within `nl` steps.
        for i in 0..self.layers.len() {
            let mut p = self.layers[i].parent;
            let mut steps = 0;
            while p != -1 {
                steps += 1;
                if steps > self.layers.len() {
                    return Err(bad(format!("layer {i}: its parents form a loop")));
                }
                p = self.layers[p as usize].parent;
            }
        }
        let nr = self.records.len() as i64;
        for (i, r) in self.records.iter().enumerate() {
            if !is_sha256(&r.digest) {
                return Err(bad(format!(
                    "record {i}: digest {:?} is not a sha256 digest",
                    r.digest
                )));
            }
            for res in &r.results {
                if res.layer < 0 || res.layer >= nl {
                    return Err(bad(format!(
                        "record {i}: result layer {} out of range",
                        res.layer
                    )));
                }
            }
            for c in &r.chained {
                if c.layers.iter().any(|&l| l < 0 || l >= nl) {
                    return Err(bad(format!(
                        "record {i}: a chained result's layer is out of range"
                    )));
                }
            }
            for (j, inputs) in r.inputs.iter().enumerate() {
                if inputs.is_empty() {
                    return Err(bad(format!("record {i}: input {j} links to nothing")));
                }
                for inp in inputs {
                    if inp.link < 0 || inp.link >= nr {
                        return Err(bad(format!(
                            "record {i}: input {j} links to record {} of {nr}",
                            inp.link
                        )));
                    }
                }
            }
        }
        // Links form no loop (depth-first, colours: 0 new, 1 on the path, 2 done).
        let mut colour = vec![0u8; self.records.len()];
        for start in 0..self.records.len() {
            if colour[start] != 0 {
                continue;
            }
            let mut stack = vec![(start, 0usize)];
            colour[start] = 1;
            while let Some(top) = stack.last_mut() {
                let (r, next) = *top;
                top.1 += 1;
                let link = self.records[r].inputs.iter().flatten().nth(next);
                match link.map(|i| i.link as usize) {
                    Some(l) if colour[l] == 1 => {
                        return Err(bad(format!("record {r}: its links form a loop")));
                    }
                    Some(l) if colour[l] == 0 => {
                        colour[l] = 1;
                        stack.push((l, 0));
                    }
                    Some(_) => {}
                    None => {
                        colour[r] = 2;
                        stack.pop();
                    }
                }
            }
        }
        Ok(())
    }

    /// The layers of a result (`layers` entry): the layer and its parents, bottom first.
    pub fn layer_chain(&self, top: i64) -> Vec<usize> {
        let mut chain = Vec::new();
        let mut p = top;
        while p >= 0 && (p as usize) < self.layers.len() && chain.len() <= self.layers.len() {
            chain.push(p as usize);
            p = self.layers[p as usize].parent;
        }
        chain.reverse();
        chain
    }
}

/// A key that an input of an op has, in an imported config: a record, reached through a link
/// with this selector (a content-hash key is linked without one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputKey {
    pub record: usize,
    pub selector: String,
}

/// An imported config, indexed for lookups by key.
#[derive(Debug, Default)]
pub struct Index {
    pub config: CacheConfig,
    by_digest: HashMap<String, Vec<usize>>,
}

impl Index {
    pub fn new(config: CacheConfig) -> Index {
        let mut by_digest: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in config.records.iter().enumerate() {
            by_digest.entry(r.digest.clone()).or_default().push(i);
        }
        Index { config, by_digest }
    }

    /// The records of a key without inputs (a source, or a content hash: `root_key(…, -1)`).
    pub fn roots(&self, key: &str) -> Vec<usize> {
        self.by_digest
            .get(key)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|&r| self.config.records[r].inputs.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The records of `key` (an op's `root_key(digest, output)`) whose every input links to
    /// one of that input's keys: `inputs[i]` lists what input i is known as.
    pub fn linked(&self, key: &str, inputs: &[Vec<InputKey>]) -> Vec<usize> {
        let Some(cands) = self.by_digest.get(key) else {
            return Vec::new();
        };
        cands
            .iter()
            .copied()
            .filter(|&r| {
                let rec = &self.config.records[r];
                rec.inputs.len() == inputs.len()
                    && rec.inputs.iter().zip(inputs).all(|(links, have)| {
                        links.iter().any(|l| {
                            have.iter()
                                .any(|k| k.record as i64 == l.link && k.selector == l.selector)
                        })
                    })
            })
            .collect()
    }

    /// Whether any record has this key (on whatever inputs).
    pub fn knows(&self, key: &str) -> bool {
        self.by_digest.contains_key(key)
    }

    /// Whether a record has a result to load.
    pub fn has_result(&self, r: usize) -> bool {
        let rec = &self.config.records[r];
        !rec.results.is_empty() || !rec.chained.is_empty()
    }
}

/// A record's identity while a config is built: its digest and its links per input.
type RecordId = (String, Vec<Vec<(String, usize)>>);

/// Builds a config for an export: records and layers added once each, then sorted as
/// BuildKit sorts them (so the same cache gives the same bytes).
#[derive(Debug, Default)]
pub struct Builder {
    layers: Vec<Layer>,
    layer_at: HashMap<(String, i64), usize>,
    records: Vec<Record>,
    record_at: HashMap<RecordId, usize>,
}

impl Builder {
    /// The record of `digest` with these links per input (selector, record); added once.
    pub fn record(&mut self, digest: &str, inputs: Vec<Vec<(String, usize)>>) -> usize {
        let mut inputs = inputs;
        for links in &mut inputs {
            links.sort();
            links.dedup();
        }
        let k = (digest.to_string(), inputs.clone());
        if let Some(&r) = self.record_at.get(&k) {
            return r;
        }
        self.records.push(Record {
            digest: digest.to_string(),
            inputs: inputs
                .into_iter()
                .map(|links| {
                    links
                        .into_iter()
                        .map(|(selector, link)| Input {
                            selector,
                            link: link as i64,
                        })
                        .collect()
                })
                .collect(),
            ..Record::default()
        });
        self.record_at.insert(k, self.records.len() - 1);
        self.records.len() - 1
    }

    /// The layers of a result, bottom first (blob digests); the top layer's index. (BuildKit
    /// puts a layer's media type, diff id and time on its descriptor in the manifest.)
    pub fn chain(&mut self, blobs: &[String]) -> Option<usize> {
        let mut parent = -1i64;
        for blob in blobs {
            let k = (blob.clone(), parent);
            let i = match self.layer_at.get(&k) {
                Some(&i) => i,
                None => {
                    self.layers.push(Layer {
                        blob: blob.clone(),
                        parent,
                        annotations: None,
                    });
                    self.layer_at.insert(k, self.layers.len() - 1);
                    self.layers.len() - 1
                }
            };
            parent = i as i64;
        }
        usize::try_from(parent).ok()
    }

    /// Gives record `r` the result whose top layer is `layer`.
    pub fn result(&mut self, r: usize, layer: usize, created_at: &str) {
        let rec = &mut self.records[r];
        if !rec.results.iter().any(|x| x.layer == layer as i64) {
            rec.results.push(RecordResult {
                layer: layer as i64,
                created_at: created_at.to_string(),
            });
        }
    }

    /// The config, sorted: layers by blob, records by digest and then by their links.
    pub fn finish(self) -> CacheConfig {
        let Builder {
            layers, records, ..
        } = self;
        let mut lorder: Vec<usize> = (0..layers.len()).collect();
        lorder.sort_by(|&a, &b| {
            (layers[a].blob.as_str(), layers[a].parent)
                .cmp(&(layers[b].blob.as_str(), layers[b].parent))
        });
        let mut lnew = vec![0i64; layers.len()];
        for (n, &o) in lorder.iter().enumerate() {
            lnew[o] = n as i64;
        }
        let new_layers: Vec<Layer> = lorder
            .iter()
            .map(|&o| {
                let mut l = layers[o].clone();
                if l.parent >= 0 {
                    l.parent = lnew[l.parent as usize];
                }
                l
            })
            .collect();
        let digest_of = |i: &Input| records[i.link as usize].digest.as_str();
        let mut rorder: Vec<usize> = (0..records.len()).collect();
        rorder.sort_by(|&a, &b| {
            let (ra, rb) = (&records[a], &records[b]);
            ra.digest
                .cmp(&rb.digest)
                .then(ra.inputs.len().cmp(&rb.inputs.len()))
                .then_with(|| {
                    for (ia, ib) in ra.inputs.iter().zip(&rb.inputs) {
                        let c = ia.len().cmp(&ib.len()).then_with(|| {
                            for (x, y) in ia.iter().zip(ib) {
                                let c = x
                                    .selector
                                    .cmp(&y.selector)
                                    .then(digest_of(x).cmp(digest_of(y)));
                                if c.is_ne() {
                                    return c;
                                }
                            }
                            std::cmp::Ordering::Equal
                        });
                        if c.is_ne() {
                            return c;
                        }
                    }
                    std::cmp::Ordering::Equal
                })
        });
        let mut rnew = vec![0i64; records.len()];
        for (n, &o) in rorder.iter().enumerate() {
            rnew[o] = n as i64;
        }
        let new_records = rorder
            .iter()
            .map(|&o| {
                let mut r = records[o].clone();
                for res in &mut r.results {
                    res.layer = lnew[res.layer as usize];
                }
                for links in &mut r.inputs {
                    for l in links.iter_mut() {
                        l.link = rnew[l.link as usize];
                    }
                    links.sort_by_key(|l| l.link);
                }
                r
            })
            .collect();
        CacheConfig {
            layers: new_layers,
            records: new_records,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn two_records() -> String {
        format!(
            r#"{{"layers":[{{"blob":"{}","parent":-1}},{{"blob":"{}"}}],
               "records":[{{"digest":"{}","layers":[{{"layer":0,"createdAt":"2024-01-01T00:00:00Z"}}]}},
                          {{"digest":"{}","layers":[{{"layer":1,"createdAt":"2024-01-01T00:00:00Z"}}],
                            "inputs":[[{{"selector":"s","link":0}}]]}}]}}"#,
            d(1),
            d(2),
            d(3),
            d(4)
        )
    }

    #[test]
    fn parses_and_looks_up() {
        let c = CacheConfig::parse(two_records().as_bytes()).expect("parse");
        // Go leaves a parent of 0 out: the second layer's parent is the first.
        assert_eq!(c.layer_chain(1), vec![0, 1]);
        let idx = Index::new(c);
        assert_eq!(idx.roots(&d(3)), vec![0]);
        let have = vec![vec![InputKey {
            record: 0,
            selector: "s".into(),
        }]];
        assert_eq!(idx.linked(&d(4), &have), vec![1]);
        let wrong_sel = vec![vec![InputKey {
            record: 0,
            selector: String::new(),
        }]];
        assert!(idx.linked(&d(4), &wrong_sel).is_empty());
        assert!(idx.has_result(1));
    }

    #[test]
    fn hostile_configs_are_refused() {
        let cases = [
            ("not json", "not a cache config".to_string()),
            (
                r#"{"layers":[{"blob":"sha256:x","parent":-1}]}"#,
                "not a sha256".into(),
            ),
            (
                &*format!(r#"{{"layers":[{{"blob":"{}","parent":5}}]}}"#, d(1)),
                "out of range".into(),
            ),
            (
                &*format!(
                    r#"{{"layers":[{{"blob":"{}","parent":1}},{{"blob":"{}"}}]}}"#,
                    d(1),
                    d(2)
                ),
                "loop".into(),
            ),
            (
                &*format!(
                    r#"{{"records":[{{"digest":"{}","inputs":[[{{"link":0}}]]}}]}}"#,
                    d(1)
                ),
                "loop".into(),
            ),
            (
                &*format!(r#"{{"records":[{{"digest":"{}","inputs":[[]]}}]}}"#, d(1)),
                "links to nothing".into(),
            ),
            (
                &*format!(
                    r#"{{"records":[{{"digest":"{}","layers":[{{"layer":0}}]}}]}}"#,
                    d(1)
                ),
                "out of range".into(),
            ),
        ];
        for (json, want) in cases {
            let e = CacheConfig::parse(json.as_bytes())
                .expect_err(json)
                .to_string();
            assert!(e.contains(&want), "{json}: {e}");
        }
    }
}
