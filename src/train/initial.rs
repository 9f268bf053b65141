//! The model a run starts from, beyond loading weight files: random
//! backbones (the first stage of the shipped model) and a dropout override.

use anyhow::Result;
use tch::Device;

use crate::config::DetrisConfig;
use crate::model::Detris;

/// A model with randomly initialised backbones, seeded (the trainable parts
/// get the official init).
pub fn random_model(cfg: DetrisConfig, device: Device, seed: u64) -> Result<Detris> {
    tch::manual_seed(seed as i64);
    let model = Detris::new(cfg, device)?;
    crate::model::init::init_backbones_randomly(&model, seed);
    Ok(model)
}

/// `model` with another dropout probability. The modules read it from the
/// config when they are built, so the model is rebuilt and every weight
/// copied over; what the model knows beyond its weights (a pruned
/// vocabulary's token ids) goes with it.
pub fn with_dropout(model: Detris, dropout: f64) -> Result<Detris> {
    let mut config = model.config.clone();
    config.dropout = dropout;
    let mut fresh = Detris::new(config, model.device())?;
    let map = crate::weights::state_dict(&model, false)?;
    crate::weights::load_map(&fresh, &map, true)?.check("dropout override")?;
    fresh.known_token_ids = model.known_token_ids;
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropout_override_keeps_the_weights_and_the_known_token_ids() {
        let cfg = crate::weights::read_config_file(&detris_io::fixtures::path("tiny/config.json")).unwrap();
        let mut model = random_model(cfg, Device::Cpu, 1).unwrap();
        let known = vec![0, 7, model.config.eot];
        model.known_token_ids = Some(known.clone());
        let before = crate::weights::state_dict(&model, false).unwrap();
        let changed = with_dropout(model, 0.3).unwrap();
        assert_eq!(changed.config.dropout, 0.3);
        assert_eq!(changed.decoder.layers[0].dropout, 0.3, "the modules are built with the new probability");
        assert_eq!(changed.known_token_ids, Some(known), "the pruned vocabulary's ids survive the rebuild");
        let after = crate::weights::state_dict(&changed, false).unwrap();
        assert_eq!(before.keys().collect::<Vec<_>>(), after.keys().collect::<Vec<_>>());
        for (name, t) in &before {
            assert!(t.bytes() == after[name].bytes(), "{name} changed");
        }
    }
}
