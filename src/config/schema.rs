//! `ssegate schema`: the JSON Schema of the config file, derived from the
//! serde structs in `file`, so it cannot drift from what `load` accepts as
//! shapes (unknown keys are refused there as here). Values that `load`
//! checks further (durations, sizes, templates) are plain strings in it.

/// The schema (JSON Schema draft 2020-12) of a config file.
pub fn schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(super::file::FileConfig);
    schema.insert("title".into(), "ssegate config".into());
    schema.insert(
        "description".into(),
        "The ssegate YAML config (docs/config.md). Produced by `ssegate schema`; \
         `ssegate check` validates values the schema cannot (durations, sizes, \
         templates, references between sections)."
            .into(),
    );
    schema.to_value()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_object_refuses_unknown_keys() {
        let schema = super::schema();
        assert_eq!(schema["additionalProperties"], false);
        let defs = schema["$defs"].as_object().expect("$defs");
        for (name, def) in defs {
            if def.get("properties").is_some() {
                assert_eq!(def["additionalProperties"], false, "{name}");
            }
        }
    }
}
