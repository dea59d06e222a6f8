//! Secrets may be given three ways: inline (`foo`), by environment variable name (`foo_env`)
//! or by file path (`foo_file`, trailing newline dropped, as Kubernetes Secret volumes and
//! `echo > file` leave one). Exactly one may be used. Error messages name the variable or the
//! path, never the value.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::Problem;

/// The three ways one secret can be given, as read from the file.
pub struct SecretSpec<'a> {
    /// The field's path without suffix, e.g. `projects[0].webhook_secret`.
    pub field: String,
    pub inline: Option<&'a SecretString>,
    pub env: Option<&'a String>,
    pub file: Option<&'a PathBuf>,
}

impl SecretSpec<'_> {
    pub fn is_given(&self) -> bool {
        self.inline.is_some() || self.env.is_some() || self.file.is_some()
    }

    /// Resolves the secret, or says which field is wrong and why.
    pub fn resolve(
        &self,
        lookup_env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<SecretString>, Problem> {
        let given = [
            self.inline.is_some(),
            self.env.is_some(),
            self.file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(self.problem(
                "",
                "give only one of the inline value, the `_env` variable or the `_file` path",
            ));
        }
        let value = if let Some(inline) = self.inline {
            inline.expose_secret().to_owned()
        } else if let Some(variable) = self.env {
            match lookup_env(variable) {
                Some(value) => value,
                None => {
                    return Err(self.problem("_env", &format!("variable {variable} is not set")))
                }
            }
        } else if let Some(path) = self.file {
            match std::fs::read_to_string(path) {
                Ok(text) => text.trim_end_matches(['\r', '\n']).to_owned(),
                Err(e) => {
                    return Err(self.problem(
                        "_file",
                        &format!("cannot read {}: {}", path.display(), e.kind()),
                    ))
                }
            }
        } else {
            return Ok(None);
        };
        if value.is_empty() {
            let suffix = match (self.env, self.file) {
                (Some(_), _) => "_env",
                (_, Some(_)) => "_file",
                _ => "",
            };
            return Err(self.problem(suffix, "the secret is empty"));
        }
        Ok(Some(SecretString::from(value)))
    }

    fn problem(&self, suffix: &str, message: &str) -> Problem {
        Problem {
            field: format!("{}{}", self.field, suffix),
            message: message.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(
        inline: Option<&'a SecretString>,
        env: Option<&'a String>,
        file: Option<&'a PathBuf>,
    ) -> SecretSpec<'a> {
        SecretSpec {
            field: "projects[1].webhook_secret".into(),
            inline,
            env,
            file,
        }
    }

    #[test]
    fn a_missing_variable_is_named_with_its_field() {
        let var = "MYEVENTS_SECRET".to_string();
        let err = spec(None, Some(&var), None).resolve(&|_| None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "projects[1].webhook_secret_env: variable MYEVENTS_SECRET is not set"
        );
    }

    #[test]
    fn a_secret_file_loses_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = spec(None, None, Some(&path)).resolve(&|_| None).unwrap();
        assert_eq!(secret.unwrap().expose_secret(), "s3cret");
    }

    #[test]
    fn two_ways_of_giving_one_secret_are_refused() {
        let inline = SecretString::from("a");
        let var = "X".to_string();
        let err = spec(Some(&inline), Some(&var), None)
            .resolve(&|_| Some("b".into()))
            .unwrap_err();
        assert_eq!(err.field, "projects[1].webhook_secret");
    }

    #[test]
    fn an_empty_secret_is_refused_without_echoing_anything() {
        let var = "EMPTY".to_string();
        let err = spec(None, Some(&var), None)
            .resolve(&|_| Some(String::new()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "projects[1].webhook_secret_env: the secret is empty"
        );
    }
}
