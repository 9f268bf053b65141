//! A REFER folder (`refcoco/refs(unc).p` + `refcoco/instances.json`) made of
//! the given bytes, loaded and walked as `prepare` walks it.

use detris_io::data::refer::Refer;

use super::common;

pub fn load_and_walk(refs: &[u8], instances: &[u8]) {
    let refs_path = common::write("refer/refcoco/refs(unc).p", refs);
    let instances_path = common::write("refer/refcoco/instances.json", instances);
    let refer = match Refer::load(&common::scratch().join("refer"), "refcoco", None) {
        Ok(refer) => refer,
        Err(e) => {
            let msg = e.to_string();
            let (a, b) = (refs_path.display().to_string(), instances_path.display().to_string());
            assert!(msg.contains(&a) || msg.contains(&b), "the error names neither file: {msg}");
            return;
        }
    };
    for split in ["train", "val", "testA", "testB", "test"] {
        refer.refs_in_split(split).expect("a known split");
    }
    for r in &refer.refs {
        refer.annotation(r).expect("checked by load");
        let image = refer.image(r).expect("checked by load");
        let _ = refer.ref_box(r);
        match refer.mask(r) {
            Ok(mask) => {
                assert_eq!((mask.height as u64, mask.width as u64), (image.height, image.width));
                assert_eq!(mask.counts.len(), mask.height * mask.width);
            }
            Err(e) => common::assert_names(&e.to_string(), &instances_path),
        }
    }
}
