//! What simulated devices send: ThingsBoard performance-test profiles, or a user's template with
//! `{{seq}}`, `{{ts}}` and `{{device}}` placeholders. Every payload carries its own timestamp,
//! unique per device (`{{ts}}` is the run's start plus the message's sequence number in
//! milliseconds), so `--verify` can count exactly what was stored.

use std::path::Path;

use anyhow::{Context, Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `pulseCounter`, `leakage`, `batteryLevel` (ThingsBoard's smart-meter test)
    SmartMeter,
    /// GPS position, speed, fuel and ignition
    SmartTracker,
    /// An industrial PLC: 50 numeric tags and a status
    IndustrialPlc,
}

/// A compiled template: literal text between placeholders.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    /// The key `--verify` counts: the alphabetically first key of `values` (every message has
    /// it).
    pub verify_key: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Seq,
    Ts,
    Device,
}

impl Template {
    pub fn profile(profile: Profile) -> Template {
        let text = match profile {
            Profile::SmartMeter => r#"{"ts":{{ts}},"values":{"pulseCounter":{{seq}},"leakage":false,"batteryLevel":87.5}}"#.to_owned(),
            Profile::SmartTracker => r#"{"ts":{{ts}},"values":{"latitude":50.4501,"longitude":30.5234,"speed":{{seq}},"fuel":61.3,"ignition":true,"device":"{{device}}"}}"#.to_owned(),
            Profile::IndustrialPlc => {
                let tags: Vec<String> = (0..50).map(|i| format!(r#""tag{i:02}":{}.5"#, i * 7)).collect();
                format!(r#"{{"ts":{{{{ts}}}},"values":{{"cycle":{{{{seq}}}},{},"status":"RUN"}}}}"#, tags.join(","))
            }
        };
        Template::parse(&text).unwrap_or_else(|e| unreachable!("built-in profile is valid: {e}"))
    }

    pub fn from_file(path: &Path) -> Result<Template> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read payload file {}", path.display()))?;
        Template::parse(text.trim()).with_context(|| format!("payload file {}", path.display()))
    }

    /// Parses a template; it must render valid JSON in ThingsBoard's `{"ts","values"}` form so
    /// every message is counted exactly by `--verify`.
    pub fn parse(text: &str) -> Result<Template> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").context("a {{ without its }}")?;
            parts.push(match after[..close].trim() {
                "seq" => Part::Seq,
                "ts" => Part::Ts,
                "device" => Part::Device,
                other => bail!("unknown placeholder {{{{{other}}}}}: use seq, ts or device"),
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let mut template = Template {
            parts,
            verify_key: String::new(),
        };
        let sample = template.render(1, 1_700_000_000_000, "sample-device");
        let json: serde_json::Value = serde_json::from_str(&sample)
            .with_context(|| format!("does not render valid JSON: {sample}"))?;
        if !template.parts.contains(&Part::Ts) {
            bail!("the template needs {{{{ts}}}} as its \"ts\" so --verify can count messages");
        }
        let values = json.get("values").and_then(|v| v.as_object()).context(
            "the template must render ThingsBoard's {\"ts\": {{ts}}, \"values\": {...}} form",
        )?;
        template.verify_key = values.keys().next().context("\"values\" is empty")?.clone();
        Ok(template)
    }

    /// Renders message `seq` of `device`, stamped `ts`, into `out` (cleared first). Called once
    /// per message on the hot path: integers go through `itoa`, not `fmt`.
    pub fn render_into(&self, seq: u64, ts: i64, device: &str, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.clear();
        for part in &self.parts {
            out.push_str(match part {
                Part::Text(t) => t,
                Part::Seq => digits.format(seq),
                Part::Ts => digits.format(ts),
                Part::Device => device,
            });
        }
    }

    pub fn render(&self, seq: u64, ts: i64, device: &str) -> String {
        let mut out = String::new();
        self.render_into(seq, ts, device, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled() {
        let t = Template::parse(r#"{"ts":{{ts}},"values":{"n":{{ seq }},"d":"{{device}}"}}"#)
            .expect("valid");
        assert_eq!(
            t.render(7, 1000, "dev-1"),
            r#"{"ts":1000,"values":{"n":7,"d":"dev-1"}}"#
        );
        assert_eq!(t.verify_key, "d");
    }

    #[test]
    fn profiles_render_valid_thingsboard_payloads() {
        for profile in [
            Profile::SmartMeter,
            Profile::SmartTracker,
            Profile::IndustrialPlc,
        ] {
            let t = Template::profile(profile);
            let json: serde_json::Value = serde_json::from_str(&t.render(3, 5, "d")).expect("json");
            assert_eq!(json["ts"], 5, "{profile:?}");
            assert!(
                json["values"].as_object().is_some_and(|v| !v.is_empty()),
                "{profile:?}"
            );
        }
        assert_eq!(
            Template::profile(Profile::SmartMeter).verify_key,
            "batteryLevel"
        );
        let plc = Template::profile(Profile::IndustrialPlc).render(1, 1, "d");
        let keys = serde_json::from_str::<serde_json::Value>(&plc).expect("json")["values"]
            .as_object()
            .map_or(0, serde_json::Map::len);
        assert_eq!(keys, 52);
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        let cases = [
            (
                r#"{"ts":{{ts}},"values":{"a":{{nope}}}}"#,
                "unknown placeholder",
            ),
            (r#"{"ts":{{ts}},"values":{"a":{{seq}}"#, "valid JSON"),
            (r#"{"values":{"a":{{seq}}}}"#, "{{ts}}"),
            (r#"{"ts":{{ts}},"a":{{seq}}}"#, "values"),
            (r#"{"ts":{{ts}},"values":{"a":{{seq}"#, "without its"),
        ];
        for (text, needle) in cases {
            let err = Template::parse(text).expect_err(text);
            assert!(format!("{err:#}").contains(needle), "{text}: {err:#}");
        }
    }
}
