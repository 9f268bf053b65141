//! The data sets DETRIS trains and evaluates on, their splits, and the mixed
//! training set of the DETRIS-L* models.

use crate::error::{Error, Result};
use std::collections::HashSet;

/// One prepared data set (`anns/<name>/<split>.json`, `masks/<name>/`) and the
/// REFER download it is made from (`<refer_dir>/refs(<split_by>).p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetSpec {
    /// Name in the prepared layout and in the configs: `refcocog_u`, ...
    pub name: &'static str,
    /// Folder of the REFER download: `refcoco`, `refcoco+`, `refcocog`.
    pub refer_dir: &'static str,
    /// REFER split scheme: `unc`, `umd`, `google`.
    pub split_by: &'static str,
    /// Splits with refs, as the official length table lists them.
    pub splits: &'static [&'static str],
    /// Splits the official `data_process.py` writes (refcocog always gets a
    /// `test.json`, empty for the google split).
    pub prepare_splits: &'static [&'static str],
    /// The folder under `<root>/images/` holding its pictures.
    pub image_dir: &'static str,
    /// Images `data_process.py` leaves out (their refs get no record and no mask).
    pub excluded_images: &'static [&'static str],
}

/// COCO's train2014 pictures (RefCOCO, RefCOCO+, RefCOCOg).
pub const COCO_IMAGES: &str = "train2014";
/// The ImageCLEF IAPR TC-12 pictures of ReferItGame (refclef).
pub const SAIAPR_IMAGES: &str = "saiapr_tc-12";
/// The three refclef pictures the official `data_process.py` skips.
const REFCLEF_EXCLUDED: &[&str] = &["19579.jpg", "17975.jpg", "19575.jpg"];

/// The splits of the unc scheme and of refcocog.
const UNC_SPLITS: &[&str] = &["train", "val", "testA", "testB"];
const REFCOCOG_SPLITS: &[&str] = &["train", "val", "test"];
const REFCLEF_UNC_SPLITS: &[&str] = &["train", "val", "testA", "testB", "testC"];

/// Every data set, in the order of the official tables.
pub const DATASETS: [DatasetSpec; 6] = [
    DatasetSpec {
        name: "refcoco",
        refer_dir: "refcoco",
        split_by: "unc",
        splits: UNC_SPLITS,
        prepare_splits: UNC_SPLITS,
        image_dir: COCO_IMAGES,
        excluded_images: &[],
    },
    DatasetSpec {
        name: "refcoco+",
        refer_dir: "refcoco+",
        split_by: "unc",
        splits: UNC_SPLITS,
        prepare_splits: UNC_SPLITS,
        image_dir: COCO_IMAGES,
        excluded_images: &[],
    },
    DatasetSpec {
        name: "refcocog_u",
        refer_dir: "refcocog",
        split_by: "umd",
        splits: REFCOCOG_SPLITS,
        prepare_splits: REFCOCOG_SPLITS,
        image_dir: COCO_IMAGES,
        excluded_images: &[],
    },
    DatasetSpec {
        name: "refcocog_g",
        refer_dir: "refcocog",
        split_by: "google",
        splits: &["train", "val"],
        prepare_splits: REFCOCOG_SPLITS,
        image_dir: COCO_IMAGES,
        excluded_images: &[],
    },
    DatasetSpec {
        name: "refclef",
        refer_dir: "refclef",
        split_by: "unc",
        splits: REFCLEF_UNC_SPLITS,
        prepare_splits: REFCLEF_UNC_SPLITS,
        image_dir: SAIAPR_IMAGES,
        excluded_images: REFCLEF_EXCLUDED,
    },
    DatasetSpec {
        name: "refclef_berkeley",
        refer_dir: "refclef",
        split_by: "berkeley",
        splits: REFCOCOG_SPLITS,
        prepare_splits: REFCOCOG_SPLITS,
        image_dir: SAIAPR_IMAGES,
        excluded_images: REFCLEF_EXCLUDED,
    },
];

/// The mixed training set of DETRIS-L*, in the prepared layout.
pub const MIXED: &str = "refcoco_mixed";
/// The splits `tools/mix.py` concatenates.
pub const MIXED_SPLITS: [&str; 2] = ["train", "val"];

/// The folder under `<root>/images/` of a prepared data set's pictures.
pub fn image_dir(dataset: &str) -> &'static str {
    dataset_spec(dataset).map_or(COCO_IMAGES, |d| d.image_dir)
}

fn dataset_spec(name: &str) -> Option<&'static DatasetSpec> {
    DATASETS.iter().find(|d| d.name == name)
}

/// The data sets whose train splits make up the mixed set of DETRIS-L*.
pub const MIXED_SOURCES: [&str; 3] = ["refcoco", "refcoco+", "refcocog_u"];

fn valid_names() -> String {
    DATASETS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

/// The data set called `name` (prepared-layout name, e.g. `refcocog_u`).
pub fn dataset(name: &str) -> Result<&'static DatasetSpec> {
    DATASETS
        .iter()
        .find(|d| d.name == name)
        .ok_or_else(|| Error::input(format!("unknown data set '{name}'; valid: {}", valid_names())))
}

/// Checks that `split` exists in data set `name`.
pub fn check_split(name: &str, split: &str) -> Result<&'static DatasetSpec> {
    let spec = dataset(name)?;
    if spec.splits.contains(&split) {
        Ok(spec)
    } else {
        Err(Error::input(format!("data set '{name}' has no split '{split}'; valid: {}", spec.splits.join(", "))))
    }
}

/// The data set a REFER download makes: `dataset` is a REFER folder
/// (`refcocog`) with `split_by` (`umd`), or a prepared name (`refcocog_u`)
/// with `split_by` absent or matching. `refcoco`/`refcoco+` default to `unc`.
pub fn resolve_refer(dataset: &str, split_by: Option<&str>) -> Result<&'static DatasetSpec> {
    let matches = |d: &&DatasetSpec| match split_by {
        None => d.name == dataset,
        Some(by) => (d.name == dataset || d.refer_dir == dataset) && d.split_by == by,
    };
    DATASETS.iter().find(matches).ok_or_else(|| {
        let valid: Vec<String> =
            DATASETS.iter().map(|d| format!("{} ({}, split_by {})", d.name, d.refer_dir, d.split_by)).collect();
        Error::input(format!(
            "no data set '{dataset}' with split_by {}; valid: {}",
            split_by.unwrap_or("(default)"),
            valid.join(", ")
        ))
    })
}

/// A training ref of the mixed set, tagged with the data set it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    pub dataset: &'static str,
    pub item: T,
}

/// The mixed training set: the train refs of every source in order, minus
/// every ref whose image (by file name) is in `held_out_images`, the images of
/// the val/test splits of all sources. Returns the kept refs and how many were
/// removed. (The official `tools/mix.py` does not filter; its DETRIS-L*
/// numbers were trained with that leakage.)
pub fn filter_mixed_train<T>(
    train: Vec<Sourced<T>>,
    image_of: impl Fn(&T) -> &str,
    held_out_images: &HashSet<String>,
) -> (Vec<Sourced<T>>, usize) {
    let before = train.len();
    let kept: Vec<Sourced<T>> = train.into_iter().filter(|r| !held_out_images.contains(image_of(&r.item))).collect();
    let removed = before - kept.len();
    (kept, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_splits() {
        assert_eq!(dataset("refcocog_u").unwrap().split_by, "umd");
        let err = dataset("refcocog").unwrap_err().to_string();
        assert!(err.contains("refcoco, refcoco+, refcocog_u, refcocog_g, refclef"), "{err}");
        assert!(check_split("refcoco+", "testB").is_ok());
        let err = check_split("refcocog_g", "test").unwrap_err().to_string();
        assert!(err.contains("train, val") && err.contains("'test'"), "{err}");
    }

    #[test]
    fn refer_downloads_resolve() {
        assert_eq!(resolve_refer("refcocog", Some("google")).unwrap().name, "refcocog_g");
        assert_eq!(resolve_refer("refcocog", Some("umd")).unwrap().name, "refcocog_u");
        assert_eq!(resolve_refer("refcoco", None).unwrap().name, "refcoco");
        assert_eq!(resolve_refer("refcocog_u", None).unwrap().name, "refcocog_u");
        assert_eq!(resolve_refer("refcocog_u", Some("umd")).unwrap().name, "refcocog_u");
        assert!(resolve_refer("refcocog", None).is_err(), "refcocog needs umd or google");
        assert!(resolve_refer("refcoco", Some("google")).is_err());
        assert!(resolve_refer("refcocog_u", Some("google")).is_err());
        assert_eq!(resolve_refer("refclef", None).unwrap().name, "refclef");
        assert_eq!(resolve_refer("refclef", Some("berkeley")).unwrap().name, "refclef_berkeley");
        assert_eq!(
            (image_dir("refclef"), image_dir("refcoco+"), image_dir("synth")),
            ("saiapr_tc-12", "train2014", "train2014")
        );
    }

    #[test]
    fn mixed_train_drops_refs_on_held_out_images() {
        let train = vec![
            Sourced { dataset: "refcoco", item: ("a.jpg", 1) },
            Sourced { dataset: "refcoco", item: ("b.jpg", 2) },
            Sourced { dataset: "refcoco+", item: ("b.jpg", 3) },
            Sourced { dataset: "refcocog_u", item: ("c.jpg", 4) },
            Sourced { dataset: "refcocog_u", item: ("d.jpg", 5) },
        ];
        // b is in refcoco+ val, d in refcocog_u test.
        let held_out: HashSet<String> = ["b.jpg", "d.jpg", "e.jpg"].map(String::from).into();
        let (kept, removed) = filter_mixed_train(train, |r| r.0, &held_out);
        assert_eq!(removed, 3);
        let ids: Vec<(&str, i32)> = kept.iter().map(|r| (r.dataset, r.item.1)).collect();
        assert_eq!(ids, [("refcoco", 1), ("refcocog_u", 4)]);
    }
}
