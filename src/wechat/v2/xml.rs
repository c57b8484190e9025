//! API v2 bodies: a flat `<xml><name>value</name>…</xml>`. Written as the SDKs write it (names
//! sorted, digits bare, other text in CDATA, `sign` last); read leniently (CDATA or text,
//! entities resolved, unknown fields kept: they are signed too).

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;

/// Why a v2 body is not readable.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// Nesting deeper than `<xml><field>` (v2 bodies are flat).
    #[error("unexpected nested element <{0}>")]
    Nested(String),
    #[error("no <xml> root")]
    NoRoot,
}

/// Writes fields as a v2 body.
pub fn write(fields: &BTreeMap<String, String>) -> String {
    let mut out = String::from("<xml>");
    let field = |out: &mut String, k: &str, v: &str| {
        out.push('<');
        out.push_str(k);
        out.push('>');
        if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(v);
        } else {
            // "]]>" cannot appear inside one CDATA section: split it across two.
            out.push_str("<![CDATA[");
            out.push_str(&v.replace("]]>", "]]]]><![CDATA[>"));
            out.push_str("]]>");
        }
        out.push_str("</");
        out.push_str(k);
        out.push('>');
    };
    for (k, v) in fields.iter().filter(|(k, _)| k.as_str() != "sign") {
        field(&mut out, k, v);
    }
    if let Some(sign) = fields.get("sign") {
        field(&mut out, "sign", sign);
    }
    out.push_str("</xml>");
    out
}

/// Reads a v2 body into its fields.
pub fn read(text: &str) -> Result<BTreeMap<String, String>, XmlError> {
    let mut reader = Reader::from_str(text);
    let malformed = |e: &dyn std::fmt::Display| XmlError::Malformed(e.to_string());
    let mut fields = BTreeMap::new();
    let mut depth = 0usize;
    let mut seen_root = false;
    let mut current: Option<String> = None;
    let mut value = String::new();
    loop {
        match reader.read_event().map_err(|e| malformed(&e))? {
            Event::Start(e) => {
                let name = e.name().as_ref().to_owned();
                depth += 1;
                match depth {
                    1 => seen_root = true,
                    2 => {
                        current = Some(name);
                        value.clear();
                    }
                    _ => return Err(XmlError::Nested(name)),
                }
            }
            Event::Empty(e) if depth == 1 => {
                fields.insert(e.name().as_ref().to_owned(), String::new());
            }
            Event::Text(t) if depth == 2 => value.push_str(&t.xml10_content()),
            Event::CData(c) if depth == 2 => value.push_str(&c.into_inner()),
            Event::GeneralRef(r) if depth == 2 => {
                let entity = format!("&{};", r.into_inner());
                value.push_str(&quick_xml::escape::unescape(&entity).map_err(|e| malformed(&e))?);
            }
            Event::End(_) => {
                if depth == 2 {
                    fields.insert(current.take().unwrap_or_default(), std::mem::take(&mut value));
                }
                depth = depth.saturating_sub(1);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_root {
        return Err(XmlError::NoRoot);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_wechat_sends() {
        let body = "<xml><return_code><![CDATA[SUCCESS]]></return_code><total_fee>1</total_fee>\
                    <attach>a &amp; b &#x4e2d;</attach><empty/><sign>ABC</sign></xml>";
        let f = read(body).unwrap();
        assert_eq!(f["return_code"], "SUCCESS");
        assert_eq!(f["total_fee"], "1");
        assert_eq!(f["attach"], "a & b 中");
        assert_eq!(f["empty"], "");
        assert_eq!(f["sign"], "ABC");
    }

    #[test]
    fn writes_digits_bare_text_in_cdata_and_sign_last() {
        let f: BTreeMap<String, String> = [("total_fee", "100"), ("body", "一番赏"), ("sign", "S"), ("appid", "wx1")]
            .map(|(k, v)| (k.into(), v.into()))
            .into();
        assert_eq!(
            write(&f),
            "<xml><appid><![CDATA[wx1]]></appid><body><![CDATA[一番赏]]></body><total_fee>100</total_fee><sign><![CDATA[S]]></sign></xml>"
        );
    }

    #[test]
    fn refuses_what_is_not_a_flat_body() {
        assert!(matches!(read("<xml><a><b>1</b></a></xml>"), Err(XmlError::Nested(_))));
        assert!(matches!(read(""), Err(XmlError::NoRoot)));
        assert!(read("<xml><a>1</b></xml>").is_err());
    }

    proptest! {
        #[test]
        fn write_then_read_round_trips(f in proptest::collection::btree_map("[a-z_]{1,10}", "\\PC{0,24}", 0..8)) {
            prop_assert_eq!(read(&write(&f)).unwrap(), f);
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
            let _ = read(&s);
        }
    }
}
