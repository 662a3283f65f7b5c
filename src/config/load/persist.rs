//! `hub.persist:` → runtime `Persist`. The path is taken relative to the
//! config file, like every other path in it, and its directory must exist:
//! a typo there would otherwise only show at the first save.

use super::Validator;
use crate::config::file::PersistFile;
use crate::config::runtime::{BrokerKind, Persist};
use std::time::Duration;

const SHORTEST: Duration = Duration::from_millis(10);
const LONGEST: Duration = Duration::from_secs(3600);

impl Validator<'_> {
    pub(super) fn persist(
        &mut self,
        p: Option<PersistFile>,
        broker: &BrokerKind,
    ) -> Option<Persist> {
        let p = p?;
        if *broker != BrokerKind::Memory {
            self.err(
                "hub.persist",
                "`persist` is for the memory broker; Redis keeps history itself (remove `persist` or use `broker: memory`)",
            );
            return None;
        }
        let interval = self.duration(
            "hub.persist.interval",
            p.interval.as_ref(),
            Duration::from_secs(1),
        );
        if !(SHORTEST..=LONGEST).contains(&interval) {
            self.err(
                "hub.persist.interval",
                "the interval must be between 10ms and 1h",
            );
        }
        let Some(path) = p.path.filter(|s| !s.trim().is_empty()) else {
            self.err(
                "hub.persist",
                "`path` is required: the file to keep history in",
            );
            return None;
        };
        let path = self.dir.join(path.trim());
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if path.file_name().is_none() || path.is_dir() {
            self.err(
                "hub.persist.path",
                format!("`{}` is a directory; name a file in it", path.display()),
            );
            return None;
        }
        if !dir.is_dir() {
            self.err(
                "hub.persist.path",
                format!("directory `{}` does not exist", dir.display()),
            );
            return None;
        }
        Some(Persist { path, interval })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use std::path::Path;
    use std::time::Duration;

    fn errors(text: &str) -> Vec<String> {
        match load_str(text, Path::new("/tmp/t.yaml"), &|_| None) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn defaults_and_relative_path() {
        let c = load_str(
            "hub:\n  persist: { path: hub.bin }\n",
            Path::new("/tmp/t.yaml"),
            &|_| None,
        )
        .unwrap();
        let p = c.hub.persist.unwrap();
        assert_eq!(p.path, Path::new("/tmp/hub.bin"));
        assert_eq!(p.interval, Duration::from_secs(1));
    }

    #[test]
    fn mistakes_are_located() {
        let e = errors("hub:\n  broker: redis\n  persist: { path: hub.bin }\n");
        assert!(
            e.len() == 1 && e[0].starts_with("/tmp/t.yaml:3:3: ") && e[0].contains("memory broker"),
            "{e:?}"
        );
        let e = errors("hub:\n  persist: { interval: 1s }\n");
        assert!(e.len() == 1 && e[0].contains("`path` is required"), "{e:?}");
        let e = errors("hub:\n  persist:\n    path: /nonexistent-dir-ssegate/hub.bin\n");
        assert!(
            e.len() == 1
                && e[0].starts_with("/tmp/t.yaml:3:5: ")
                && e[0].contains("does not exist"),
            "{e:?}"
        );
        let e = errors("hub:\n  persist:\n    path: hub.bin\n    interval: 0s\n");
        assert!(
            e.len() == 1 && e[0].starts_with("/tmp/t.yaml:4:5: "),
            "{e:?}"
        );
        let e = errors("hub:\n  persist:\n    path: hub.bin\n    every: 1s\n");
        assert!(
            e.len() == 1 && e[0].contains("unknown key `every`"),
            "{e:?}"
        );
    }
}
