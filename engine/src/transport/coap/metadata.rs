//! The metadata a CoAP request gives its converter, in ThingsBoard's names: `Option:uri` and
//! the other options as text.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use coap_lite::{CoapOption, ContentFormat, Packet};

/// What the converter sees besides the integration's own metadata. `local`: the endpoint's
/// address, the host and port of `Option:uri` when the request names none.
pub fn metadata(packet: &Packet, path: &[String], local: SocketAddr) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    if let Some(format) = packet.get_first_option(CoapOption::ContentFormat) {
        let number = format
            .iter()
            .fold(0usize, |v, b| (v << 8) | usize::from(*b));
        m.insert("Option:content-format".into(), content_format_name(number));
    }
    let host = packet
        .get_first_option(CoapOption::UriHost)
        .map(|h| String::from_utf8_lossy(h).into_owned())
        .unwrap_or_else(|| local.ip().to_string());
    let port = packet
        .get_first_option(CoapOption::UriPort)
        .map(|p| p.iter().fold(0u32, |v, b| (v << 8) | u32::from(*b)))
        .unwrap_or(u32::from(local.port()));
    let mut uri = format!("coap://{host}:{port}/{}", path.join("/"));
    if let Some(query) = joined(packet, CoapOption::UriQuery, "&") {
        uri.push('?');
        uri.push_str(&query);
    }
    m.insert("Option:uri".into(), uri);
    if let Some(p) = joined(packet, CoapOption::LocationPath, "/") {
        m.insert("Option:location-path".into(), p);
    }
    if let Some(q) = joined(packet, CoapOption::LocationQuery, "&") {
        m.insert("Option:location-query".into(), q);
    }
    m
}

fn joined(packet: &Packet, option: CoapOption, separator: &str) -> Option<String> {
    let values = packet.get_option(option)?;
    let parts: Vec<String> = values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join(separator))
}

/// The media type of a Content-Format number, as ThingsBoard shows it; the number itself when
/// it is not a common one.
fn content_format_name(number: usize) -> String {
    let name = match ContentFormat::try_from(number) {
        Ok(ContentFormat::TextPlain) => "text/plain",
        Ok(ContentFormat::ApplicationLinkFormat) => "application/link-format",
        Ok(ContentFormat::ApplicationXML) => "application/xml",
        Ok(ContentFormat::ApplicationOctetStream) => "application/octet-stream",
        Ok(ContentFormat::ApplicationEXI) => "application/exi",
        Ok(ContentFormat::ApplicationJSON) => "application/json",
        Ok(ContentFormat::ApplicationCBOR) => "application/cbor",
        Ok(ContentFormat::ApplicationSenmlJSON) => "application/senml+json",
        Ok(ContentFormat::ApplicationSenmlCBOR) => "application/senml+cbor",
        _ => return number.to_string(),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_formats_have_their_media_type_names() {
        assert_eq!(content_format_name(0), "text/plain");
        assert_eq!(content_format_name(50), "application/json");
        assert_eq!(content_format_name(42), "application/octet-stream");
        assert_eq!(content_format_name(65_000), "65000");
    }

    #[test]
    fn the_uri_names_the_endpoint_unless_the_request_names_a_host() {
        let local = SocketAddr::from(([127, 0, 0, 1], 5683));
        let mut p = Packet::new();
        p.add_option(CoapOption::UriPath, b"i".to_vec());
        p.add_option(CoapOption::UriPath, b"key".to_vec());
        p.add_option(CoapOption::UriQuery, b"a=1".to_vec());
        p.add_option(CoapOption::UriQuery, b"b=2".to_vec());
        p.add_option(CoapOption::ContentFormat, vec![50]);
        let path = ["i".to_owned(), "key".to_owned()];
        let m = metadata(&p, &path, local);
        assert_eq!(m["Option:uri"], "coap://127.0.0.1:5683/i/key?a=1&b=2");
        assert_eq!(m["Option:content-format"], "application/json");
        p.add_option(CoapOption::UriHost, b"example.org".to_vec());
        p.add_option(CoapOption::UriPort, vec![0x16, 0x34]);
        let m = metadata(&p, &path, local);
        assert_eq!(m["Option:uri"], "coap://example.org:5684/i/key?a=1&b=2");
    }
}
