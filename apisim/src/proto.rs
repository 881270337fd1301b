//! Request bodies in Kubernetes protobuf (`application/vnd.kubernetes.protobuf`), which typed Go clients
//! send for built-in types (Helm's release Secrets, `kubectl create namespace|secret|configmap`): the
//! envelope (`k8s\0` and a `runtime.Unknown` naming apiVersion and kind) and the messages of a few core
//! kinds, decoded to the JSON the API would have received. Other kinds are refused with 415.

use base64::Engine as _;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Time,
    Strs,
    MapStr,
    MapBytes,
    Msg(&'static [Field]),
    Msgs(&'static [Field]),
}

type Field = (u64, &'static str, Kind);

use Kind::*;

const TYPE_META: &[Field] = &[(1, "apiVersion", Str), (2, "kind", Str)];
const OWNER_REFERENCE: &[Field] = &[
    (1, "kind", Str),
    (3, "name", Str),
    (4, "uid", Str),
    (5, "apiVersion", Str),
    (6, "controller", Bool),
    (7, "blockOwnerDeletion", Bool),
];
const OBJECT_META: &[Field] = &[
    (1, "name", Str),
    (2, "generateName", Str),
    (3, "namespace", Str),
    (5, "uid", Str),
    (6, "resourceVersion", Str),
    (7, "generation", Int),
    (8, "creationTimestamp", Time),
    (9, "deletionTimestamp", Time),
    (10, "deletionGracePeriodSeconds", Int),
    (11, "labels", MapStr),
    (12, "annotations", MapStr),
    (13, "ownerReferences", Msgs(OWNER_REFERENCE)),
    (14, "finalizers", Strs),
];
const SECRET: &[Field] = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "data", MapBytes),
    (3, "type", Str),
    (4, "stringData", MapStr),
    (5, "immutable", Bool),
];
const CONFIG_MAP: &[Field] =
    &[(1, "metadata", Msg(OBJECT_META)), (2, "data", MapStr), (3, "binaryData", MapBytes), (4, "immutable", Bool)];
const NAMESPACE: &[Field] = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "spec", Msg(&[(1, "finalizers", Strs)])),
    (3, "status", Msg(&[(1, "phase", Str)])),
];
const NAME: &[Field] = &[(1, "name", Str)];
const OBJECT_REFERENCE: &[Field] = &[(1, "kind", Str), (2, "namespace", Str), (3, "name", Str), (4, "uid", Str)];
const SERVICE_ACCOUNT: &[Field] = &[
    (1, "metadata", Msg(OBJECT_META)),
    (2, "secrets", Msgs(OBJECT_REFERENCE)),
    (3, "imagePullSecrets", Msgs(NAME)),
    (4, "automountServiceAccountToken", Bool),
];

/// The kinds decoded, by apiVersion and kind.
fn schema_of(api_version: &str, kind: &str) -> Option<&'static [Field]> {
    match (api_version, kind) {
        ("v1", "Secret") => Some(SECRET),
        ("v1", "ConfigMap") => Some(CONFIG_MAP),
        ("v1", "Namespace") => Some(NAMESPACE),
        ("v1", "ServiceAccount") => Some(SERVICE_ACCOUNT),
        _ => None,
    }
}

/// Decodes a protobuf-encoded object to JSON.
pub(crate) fn decode(body: &[u8]) -> Result<Value, String> {
    let envelope = body.strip_prefix(b"k8s\0").ok_or("not a Kubernetes protobuf body (no k8s\\0 prefix)")?;
    // runtime.Unknown: typeMeta (1), raw (2), contentEncoding (3).
    let (mut type_meta, mut raw, mut encoding) = (Value::Null, &[][..], String::new());
    let mut r = Reader(envelope);
    while !r.0.is_empty() {
        match r.field()? {
            (1, Ok(b)) => type_meta = message(b, TYPE_META)?,
            (2, Ok(b)) => raw = b,
            (3, Ok(b)) => encoding = text(b)?,
            _ => {}
        }
    }
    let s = |f: &str| type_meta[f].as_str().unwrap_or_default().to_owned();
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    if !encoding.is_empty() {
        return Err(format!("content encoding {encoding:?} is not supported"));
    }
    let schema = schema_of(&api_version, &kind)
        .ok_or_else(|| format!("{kind} ({api_version}) in protobuf is not supported by the simulator; send JSON"))?;
    let mut obj = message(raw, schema)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or("truncated varint")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".to_owned())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("truncated field".to_owned());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field: its number and, for length-delimited ones, the bytes; others as a number.
    fn field(&mut self) -> Result<(u64, Result<&'a [u8], u64>), String> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Err(self.varint()?),
            1 => Err(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| "bad fixed64")?)),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|e| e.to_string())?;
                Ok(self.take(n)?)
            }
            5 => Err(u64::from(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| "bad fixed32")?))),
            t => return Err(format!("unsupported wire type {t}")),
        };
        Ok((key >> 3, value))
    }
}

fn text(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

/// A map entry's key (1) and value (2).
fn entry(b: &[u8]) -> Result<(String, &[u8]), String> {
    let (mut key, mut value) = (String::new(), &[][..]);
    let mut r = Reader(b);
    while !r.0.is_empty() {
        match r.field()? {
            (1, Ok(k)) => key = text(k)?,
            (2, Ok(v)) => value = v,
            _ => {}
        }
    }
    Ok((key, value))
}

fn time(b: &[u8]) -> Result<Option<String>, String> {
    let mut seconds = 0i64;
    let mut r = Reader(b);
    while !r.0.is_empty() {
        if let (1, Err(v)) = r.field()? {
            seconds = v as i64;
        }
    }
    Ok((seconds != 0).then(|| crate::rfc3339(seconds)))
}

fn message(b: &[u8], schema: &[Field]) -> Result<Value, String> {
    let mut out = Map::new();
    let mut r = Reader(b);
    while !r.0.is_empty() {
        let (number, value) = r.field()?;
        let Some(&(_, field, kind)) = schema.iter().find(|(n, _, _)| *n == number) else { continue };
        let name = field.to_owned();
        let bytes = || value.map_err(|_| format!("field {field}: expected length-delimited"));
        let number = || value.err().ok_or_else(|| format!("field {field}: expected a number"));
        match kind {
            Str => {
                let s = text(bytes()?)?;
                if !s.is_empty() {
                    out.insert(name, json!(s));
                }
            }
            Int => {
                let n = number()? as i64;
                if n != 0 {
                    out.insert(name, json!(n));
                }
            }
            Bool => {
                if number()? != 0 {
                    out.insert(name, json!(true));
                }
            }
            Time => {
                if let Some(t) = time(bytes()?)? {
                    out.insert(name, json!(t));
                }
            }
            Strs => push(&mut out, name, json!(text(bytes()?)?)),
            MapStr | MapBytes => {
                let (k, v) = entry(bytes()?)?;
                let v = match kind {
                    MapStr => json!(text(v)?),
                    _ => json!(base64::engine::general_purpose::STANDARD.encode(v)),
                };
                if let Value::Object(m) = out.entry(name).or_insert_with(|| json!({})) {
                    m.insert(k, v);
                }
            }
            Msg(fields) => {
                out.insert(name, message(bytes()?, fields)?);
            }
            Msgs(fields) => push(&mut out, name, message(bytes()?, fields)?),
        }
    }
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, name: String, v: Value) {
    if let Value::Array(a) = out.entry(name).or_insert_with(|| json!([])) {
        a.push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(n << 3 | 2).unwrap(), u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_secret_in_protobuf_decodes_to_its_json() {
        let labels = [field(1, b"owner"), field(2, b"helm")].concat();
        let meta = [field(1, b"sh.helm.release.v1.osm.v1"), field(3, b"osm-system"), field(11, &labels)].concat();
        let data = [field(1, b"release"), field(2, b"\x01\x02")].concat();
        let secret = [field(1, &meta), field(2, &data), field(3, b"helm.sh/release.v1")].concat();
        let type_meta = [field(1, b"v1"), field(2, b"Secret")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &secret)].concat();
        let v = decode(&body).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Secret", "type": "helm.sh/release.v1", "data": {"release": "AQI="},
                   "metadata": {"name": "sh.helm.release.v1.osm.v1", "namespace": "osm-system", "labels": {"owner": "helm"}}})
        );
        let pod = [b"k8s\0".to_vec(), field(1, &[field(1, b"v1"), field(2, b"Pod")].concat())].concat();
        assert!(decode(&pod).unwrap_err().contains("not supported"));
    }
}
