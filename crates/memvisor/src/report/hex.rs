//! The JSON form of 64-bit addresses and bit patterns: a lowercase hex string `"0x…"` (no
//! leading zeros; zero is `"0x0"`), lossless where a JSON number is not (jq, JavaScript and
//! many JSON tools read numbers as IEEE doubles, exact only up to 2^53). Used with
//! `#[serde(serialize_with = "…")]` on every GPA, GVA, PFN, PTE, CR2, RIP, register, error
//! code, flag word and written value of the report; counts, sizes in bytes
//! and times stay numbers. The shape is `docs/report.schema.json`'s `hex` definition.

use serde::ser::{SerializeSeq, SerializeTuple};
use serde::Serializer;

/// `"0x…"` for `v`.
pub fn to_hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Serialize a `u64` as a hex string.
///
/// # Errors
/// The serializer's.
pub fn hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(*v))
}

/// Serialize a `u32` (flag words) as a hex string.
///
/// # Errors
/// The serializer's.
pub fn hex32<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(u64::from(*v)))
}

/// Serialize an `Option<u64>` as a hex string or `null`.
///
/// # Errors
/// The serializer's.
pub fn hex_opt<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&to_hex(*v)),
        None => s.serialize_none(),
    }
}

/// Serialize a slice of `u64` as an array of hex strings.
///
/// # Errors
/// The serializer's.
pub fn hex_vec<S: Serializer>(v: &[u64], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for x in v {
        seq.serialize_element(&to_hex(*x))?;
    }
    seq.end()
}

/// Serialize an `Option<(u64, u16)>` (a table frame and an index in it) as
/// `["0x…", index]` or `null`.
///
/// # Errors
/// The serializer's.
pub fn hex_table_index<S: Serializer>(v: &Option<(u64, u16)>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some((t, i)) => {
            let mut tup = s.serialize_tuple(2)?;
            tup.serialize_element(&to_hex(*t))?;
            tup.serialize_element(i)?;
            tup.end()
        }
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct T {
        #[serde(serialize_with = "hex")]
        a: u64,
        #[serde(serialize_with = "hex32")]
        f: u32,
        #[serde(serialize_with = "hex_opt")]
        o: Option<u64>,
        #[serde(serialize_with = "hex_opt")]
        n: Option<u64>,
        #[serde(serialize_with = "hex_vec")]
        v: Vec<u64>,
        #[serde(serialize_with = "hex_table_index")]
        p: Option<(u64, u16)>,
    }

    #[test]
    fn lossless_hex_strings() {
        let t = T {
            a: 0xffff_ffff_8020_1e8a,
            f: 2,
            o: Some(u64::MAX),
            n: None,
            v: vec![0, 0x1000],
            p: Some((0x1234, 511)),
        };
        let j = serde_json::to_value(&t).unwrap_or_default();
        assert_eq!(
            j,
            serde_json::json!({"a": "0xffffffff80201e8a", "f": "0x2",
                "o": "0xffffffffffffffff", "n": null, "v": ["0x0", "0x1000"],
                "p": ["0x1234", 511]})
        );
    }
}
