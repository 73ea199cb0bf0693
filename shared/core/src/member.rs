//! Member profiles as automerge documents.
//!
//! One document per member. Scalar fields live at the root and merge field by field (a
//! concurrent edit of two different fields keeps both; of the same field, automerge picks one
//! winner deterministically). Tags are a map from tag to `true`, so they behave as a set:
//! concurrent additions all survive.
//!
//! Documents are created and edited here; storing them is the caller's job. Every edit returns
//! the automerge change bytes, which are what replicates.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::id::StoreId;
use crate::limits;

/// The fields a profile has. `None` means "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub name: String,
    pub phone: String,
    pub card_no: String,
    pub gender: Option<Gender>,
    pub birthday: Option<String>,
    pub email: Option<String>,
    pub address: Option<String>,
    pub note: Option<String>,
    pub home_store: Option<String>,
    pub tags: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gender {
    Male,
    Female,
    Other,
}

impl Gender {
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
        }
    }
    pub fn parse(text: &str) -> Option<Gender> {
        match text {
            "male" => Some(Gender::Male),
            "female" => Some(Gender::Female),
            "other" => Some(Gender::Other),
            _ => None,
        }
    }
}

/// A change to a profile. `None` leaves a field alone; for optional fields `Some(None)` clears.
/// `tags` replaces the whole set (applied as the difference, so concurrent edits merge).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfilePatch {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub card_no: Option<String>,
    pub gender: Option<Option<Gender>>,
    pub birthday: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub address: Option<Option<String>>,
    pub note: Option<Option<String>>,
    pub tags: Option<BTreeSet<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("member document is damaged: {0}")]
    Document(#[from] automerge::AutomergeError),
    #[error("member change is damaged: {0}")]
    Change(#[from] automerge::LoadChangeError),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> MemberError {
    MemberError::InvalidField {
        field,
        reason: reason.into(),
    }
}

/// Normalize a mainland China mobile number: drops spaces and dashes and an optional
/// `+86` / `0086` / `86` prefix; the result is 11 digits starting with 1[3-9].
pub fn normalize_phone(raw: &str) -> Result<String, MemberError> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    let digits = compact
        .strip_prefix("+86")
        .or_else(|| compact.strip_prefix("0086"))
        .unwrap_or(&compact);
    let digits = if digits.len() == 13 {
        digits.strip_prefix("86").unwrap_or(digits)
    } else {
        digits
    };
    let valid = digits.len() == 11
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.starts_with('1')
        && matches!(digits.as_bytes()[1], b'3'..=b'9');
    if !valid {
        return Err(invalid(
            "phone",
            "expected a mainland mobile number such as 13812345678",
        ));
    }
    Ok(digits.to_owned())
}

/// Validate a free card number: 4..=20 ASCII letters or digits.
pub fn validate_card_no(card_no: &str) -> Result<(), MemberError> {
    let ok = (4..=limits::card_no_chars_max).contains(&card_no.len())
        && card_no.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(invalid("card_no", "4 to 20 letters or digits"))
    }
}

fn validate_text(field: &'static str, text: &str, max_chars: usize) -> Result<(), MemberError> {
    if text.chars().count() > max_chars {
        return Err(invalid(field, format!("at most {max_chars} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

/// `YYYY-MM-DD` with a real calendar date.
pub fn validate_birthday(text: &str) -> Result<(), MemberError> {
    let bad = || invalid("birthday", "expected YYYY-MM-DD");
    let parts: Vec<&str> = text.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return Err(bad());
    }
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<u32>(), m.parse::<u32>(), d.parse::<u32>()) else {
        return Err(bad());
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1900..=2200).contains(&y) || d == 0 || d > days {
        return Err(bad());
    }
    Ok(())
}

fn validate_tags(tags: &BTreeSet<String>) -> Result<(), MemberError> {
    if tags.len() > limits::member_tags_max {
        return Err(invalid(
            "tags",
            format!("at most {} tags", limits::member_tags_max),
        ));
    }
    for tag in tags {
        if tag.trim().is_empty() {
            return Err(invalid("tags", "a tag may not be empty"));
        }
        validate_text("tags", tag, limits::tag_chars_max)?;
    }
    Ok(())
}

/// Check a full profile for a new member (phone must already be normalized).
pub fn validate_profile(profile: &Profile) -> Result<(), MemberError> {
    validate_profile_except_tags(profile)?;
    validate_tags(&profile.tags)
}

fn validate_profile_except_tags(profile: &Profile) -> Result<(), MemberError> {
    if profile.name.trim().is_empty() {
        return Err(invalid("name", "required"));
    }
    validate_text("name", &profile.name, limits::name_chars_max)?;
    normalize_phone(&profile.phone)?;
    validate_card_no(&profile.card_no)?;
    if let Some(birthday) = &profile.birthday {
        validate_birthday(birthday)?;
    }
    for (field, value) in [
        ("email", &profile.email),
        ("address", &profile.address),
        ("note", &profile.note),
    ] {
        if let Some(value) = value {
            validate_text(field, value, limits::note_chars_max)?;
        }
    }
    Ok(())
}

/// A loaded member document, bound to the store that edits it.
pub struct MemberDoc {
    doc: AutoCommit,
}

impl MemberDoc {
    /// Create a new member document; returns it and the change that creates it.
    pub fn create(
        store: &StoreId,
        profile: &Profile,
        now_ms: u64,
    ) -> Result<(MemberDoc, Vec<u8>), MemberError> {
        validate_profile(profile)?;
        let mut doc = AutoCommit::new();
        doc.set_actor(ActorId::from(store.actor_bytes().as_slice()));
        doc.put(ROOT, "name", profile.name.as_str())?;
        doc.put(ROOT, "phone", profile.phone.as_str())?;
        doc.put(ROOT, "card_no", profile.card_no.as_str())?;
        let optional = [
            ("gender", profile.gender.map(|g| g.as_str().to_owned())),
            ("birthday", profile.birthday.clone()),
            ("email", profile.email.clone()),
            ("address", profile.address.clone()),
            ("note", profile.note.clone()),
            ("home_store", profile.home_store.clone()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                doc.put(ROOT, key, value)?;
            }
        }
        let tags = doc.put_object(ROOT, "tags", ObjType::Map)?;
        for tag in &profile.tags {
            doc.put(&tags, tag.as_str(), true)?;
        }
        let mut member = MemberDoc { doc };
        let change = member.commit(now_ms);
        Ok((member, change))
    }

    /// Load saved bytes and bind the document to `store` for further edits.
    pub fn load(store: &StoreId, saved: &[u8]) -> Result<MemberDoc, MemberError> {
        let mut doc = AutoCommit::load(saved)?;
        doc.set_actor(ActorId::from(store.actor_bytes().as_slice()));
        Ok(MemberDoc { doc })
    }

    /// Build a document from change bytes alone (e.g. a member first seen through sync).
    pub fn from_changes(store: &StoreId, changes: &[Vec<u8>]) -> Result<MemberDoc, MemberError> {
        let mut doc = AutoCommit::new();
        doc.set_actor(ActorId::from(store.actor_bytes().as_slice()));
        let mut member = MemberDoc { doc };
        member.apply_changes(changes)?;
        Ok(member)
    }

    /// True if some applied change waits for a change that has not arrived yet.
    pub fn has_missing_changes(&mut self) -> bool {
        !self.doc.get_missing_deps(&[]).is_empty()
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    /// Apply changes received from other replicas (duplicates are ignored by automerge).
    pub fn apply_changes(&mut self, changes: &[Vec<u8>]) -> Result<(), MemberError> {
        let mut parsed = Vec::with_capacity(changes.len());
        for bytes in changes {
            parsed.push(Change::from_bytes(bytes.clone())?);
        }
        self.doc.apply_changes(parsed)?;
        Ok(())
    }

    /// Edit the profile. Returns the change bytes, or `None` if the patch changed nothing.
    pub fn edit(
        &mut self,
        patch: &ProfilePatch,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, MemberError> {
        let mut next = self.profile();
        apply_patch_to(&mut next, patch)?;
        // Concurrent tag additions can merge into more tags than one edit may set; that must
        // not block edits of other fields, so the tag limit applies only when tags are edited.
        validate_profile_except_tags(&next)?;
        if patch.tags.is_some() {
            validate_tags(&next.tags)?;
        }
        let current = self.profile();
        if next == current {
            return Ok(None);
        }
        for (key, old, new) in [
            ("name", Some(current.name.clone()), Some(next.name.clone())),
            (
                "phone",
                Some(current.phone.clone()),
                Some(next.phone.clone()),
            ),
            (
                "card_no",
                Some(current.card_no.clone()),
                Some(next.card_no.clone()),
            ),
            (
                "gender",
                current.gender.map(|g| g.as_str().to_owned()),
                next.gender.map(|g| g.as_str().to_owned()),
            ),
            ("birthday", current.birthday.clone(), next.birthday.clone()),
            ("email", current.email.clone(), next.email.clone()),
            ("address", current.address.clone(), next.address.clone()),
            ("note", current.note.clone(), next.note.clone()),
        ] {
            if old == new {
                continue;
            }
            match new {
                Some(value) => self.doc.put(ROOT, key, value)?,
                None => self.doc.delete(ROOT, key)?,
            }
        }
        if next.tags != current.tags {
            let tags = match self.doc.get(ROOT, "tags")? {
                Some((Value::Object(ObjType::Map), id)) => id,
                _ => self.doc.put_object(ROOT, "tags", ObjType::Map)?,
            };
            for removed in current.tags.difference(&next.tags) {
                self.doc.delete(&tags, removed.as_str())?;
            }
            for added in next.tags.difference(&current.tags) {
                self.doc.put(&tags, added.as_str(), true)?;
            }
        }
        Ok(Some(self.commit(now_ms)))
    }

    fn commit(&mut self, now_ms: u64) -> Vec<u8> {
        let time = i64::try_from(now_ms).unwrap_or(i64::MAX);
        self.doc
            .commit_with(CommitOptions::default().with_time(time));
        self.doc
            .get_last_local_change()
            .map(|c| c.raw_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Read the current profile. Missing or mistyped fields read as empty.
    pub fn profile(&self) -> Profile {
        let text = |key: &str| -> Option<String> {
            match self.doc.get(ROOT, key) {
                Ok(Some((Value::Scalar(scalar), _))) => match scalar.as_ref() {
                    ScalarValue::Str(s) => Some(s.to_string()),
                    _ => None,
                },
                _ => None,
            }
        };
        let mut tags = BTreeSet::new();
        if let Ok(Some((Value::Object(ObjType::Map), tags_id))) = self.doc.get(ROOT, "tags") {
            for key in self.doc.keys(&tags_id) {
                tags.insert(key);
            }
        }
        Profile {
            name: text("name").unwrap_or_default(),
            phone: text("phone").unwrap_or_default(),
            card_no: text("card_no").unwrap_or_default(),
            gender: text("gender").as_deref().and_then(Gender::parse),
            birthday: text("birthday"),
            email: text("email"),
            address: text("address"),
            note: text("note"),
            home_store: text("home_store"),
            tags,
        }
    }

    /// Hashes of the document's current heads, sorted: equal heads ⇔ same document.
    pub fn heads_hex(&mut self) -> Vec<String> {
        let mut heads: Vec<String> = self.doc.get_heads().iter().map(|h| h.to_string()).collect();
        heads.sort();
        heads
    }
}

fn apply_patch_to(profile: &mut Profile, patch: &ProfilePatch) -> Result<(), MemberError> {
    if let Some(name) = &patch.name {
        profile.name = name.trim().to_owned();
    }
    if let Some(phone) = &patch.phone {
        profile.phone = normalize_phone(phone)?;
    }
    if let Some(card_no) = &patch.card_no {
        profile.card_no = card_no.clone();
    }
    if let Some(gender) = patch.gender {
        profile.gender = gender;
    }
    for (target, value) in [
        (&mut profile.birthday, &patch.birthday),
        (&mut profile.email, &patch.email),
        (&mut profile.address, &patch.address),
        (&mut profile.note, &patch.note),
    ] {
        if let Some(value) = value {
            *target = value.clone();
        }
    }
    if let Some(tags) = &patch.tags {
        profile.tags = tags.iter().map(|t| t.trim().to_owned()).collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(id: &str) -> StoreId {
        StoreId::parse(id).unwrap()
    }

    fn sample() -> Profile {
        Profile {
            name: "张三".into(),
            phone: "13812345678".into(),
            card_no: "100001".into(),
            tags: ["vip".to_owned()].into(),
            ..Profile::default()
        }
    }

    #[test]
    fn phones_are_normalized() {
        assert_eq!(normalize_phone("+86 138-1234-5678").unwrap(), "13812345678");
        assert_eq!(normalize_phone("008613812345678").unwrap(), "13812345678");
        assert_eq!(normalize_phone("8613812345678").unwrap(), "13812345678");
        assert_eq!(normalize_phone("13812345678").unwrap(), "13812345678");
        for bad in [
            "",
            "1381234567",
            "12812345678",
            "+1 2025550123",
            "1381234567x",
            "１３８",
        ] {
            assert!(normalize_phone(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn birthdays_are_real_dates() {
        assert!(validate_birthday("2000-02-29").is_ok());
        assert!(validate_birthday("1999-02-29").is_err());
        assert!(validate_birthday("1999-13-01").is_err());
        assert!(validate_birthday("99-01-01").is_err());
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let (mut origin, _) = MemberDoc::create(&store("s1"), &sample(), 1).unwrap();
        let saved = origin.save();
        let mut at_a = MemberDoc::load(&store("s1"), &saved).unwrap();
        let mut at_b = MemberDoc::load(&store("s2"), &saved).unwrap();
        let patch_a = ProfilePatch {
            email: Some(Some("a@example.com".into())),
            ..Default::default()
        };
        let mut tags_b = sample().tags;
        tags_b.insert("new".into());
        let patch_b = ProfilePatch {
            name: Some("张三丰".into()),
            tags: Some(tags_b),
            ..Default::default()
        };
        let change_a = at_a.edit(&patch_a, 2).unwrap().unwrap();
        let change_b = at_b.edit(&patch_b, 2).unwrap().unwrap();
        at_a.apply_changes(&[change_b]).unwrap();
        at_b.apply_changes(&[change_a]).unwrap();
        assert_eq!(at_a.profile(), at_b.profile());
        let merged = at_a.profile();
        assert_eq!(merged.name, "张三丰");
        assert_eq!(merged.email.as_deref(), Some("a@example.com"));
        assert!(merged.tags.contains("new") && merged.tags.contains("vip"));
    }

    #[test]
    fn a_patch_that_changes_nothing_makes_no_change() {
        let (mut doc, _) = MemberDoc::create(&store("s1"), &sample(), 1).unwrap();
        let patch = ProfilePatch {
            name: Some("张三".into()),
            ..Default::default()
        };
        assert!(doc.edit(&patch, 2).unwrap().is_none());
        let bad = ProfilePatch {
            phone: Some("123".into()),
            ..Default::default()
        };
        assert!(doc.edit(&bad, 2).is_err());
        assert_eq!(doc.profile(), sample());
    }
}
