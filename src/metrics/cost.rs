//! What a turn cost: the configured prices (`[pricing."<model>"]`, USD per million tokens)
//! applied to its token kinds.
//!
//! The worker's kinds overlap: `cached_input` and `cache_write_input` are parts of
//! `input`, `reasoning_output` is part of `output` (the Responses API's usage, which the
//! app-server passes on). Each token is priced once, at the rate of the narrowest kind it
//! belongs to: uncached input = input − cached − cache-write at `input`, cached at
//! `cached_input`, cache-write at `cache_write_input`, reasoning at `reasoning_output`,
//! the rest of output at `output`.

use std::collections::HashMap;

use super::TokenCounts;
use crate::config::PriceConfig;

/// One model's prices in USD per token, every kind filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    input: f64,
    cached_input: f64,
    cache_write_input: f64,
    output: f64,
    reasoning_output: f64,
}

impl From<&PriceConfig> for Price {
    fn from(p: &PriceConfig) -> Price {
        const PER_TOKEN: f64 = 1e-6;
        Price {
            input: p.input * PER_TOKEN,
            cached_input: p.cached_input * PER_TOKEN,
            cache_write_input: p.cache_write_input.unwrap_or(p.input) * PER_TOKEN,
            output: p.output * PER_TOKEN,
            reasoning_output: p.reasoning_output.unwrap_or(p.output) * PER_TOKEN,
        }
    }
}

impl Price {
    /// The cost in USD of a turn's tokens.
    pub fn cost(&self, t: &TokenCounts) -> f64 {
        let [input, cached, cache_write, output, reasoning] = t.0;
        // A worker reporting parts larger than the whole is believed for the parts.
        let uncached = input.saturating_sub(cached.saturating_add(cache_write));
        let visible_output = output.saturating_sub(reasoning);
        uncached as f64 * self.input
            + cached as f64 * self.cached_input
            + cache_write as f64 * self.cache_write_input
            + visible_output as f64 * self.output
            + reasoning as f64 * self.reasoning_output
    }
}

/// The prices by model name, as the worker (or else the client) names the model.
#[derive(Debug, Default)]
pub struct Prices(HashMap<String, Price>);

impl Prices {
    pub fn new<'a>(config: impl IntoIterator<Item = (&'a String, &'a PriceConfig)>) -> Prices {
        Prices(
            config
                .into_iter()
                .map(|(model, p)| (model.clone(), Price::from(p)))
                .collect(),
        )
    }

    pub fn get(&self, model: Option<&str>) -> Option<&Price> {
        self.0.get(model?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(text: &str) -> Price {
        Price::from(&toml::from_str::<PriceConfig>(text).unwrap())
    }

    #[test]
    fn each_token_is_priced_once_at_its_narrowest_kind() {
        let p = price("input = 1.25\ncached_input = 0.125\noutput = 10.0\nreasoning_output = 20.0\ncache_write_input = 2.0");
        // 11 input of which 3 cached and 1 cache-write; 7 output of which 2 reasoning.
        let cost = p.cost(&TokenCounts([11, 3, 1, 7, 2]));
        let hand = (7.0 * 1.25 + 3.0 * 0.125 + 1.0 * 2.0 + 5.0 * 10.0 + 2.0 * 20.0) / 1e6;
        assert!((cost - hand).abs() < 1e-15, "{cost} != {hand}");
    }

    #[test]
    fn reasoning_and_cache_write_default_to_output_and_input() {
        let p = price("input = 1.0\ncached_input = 0.5\noutput = 4.0");
        let cost = p.cost(&TokenCounts([10, 2, 3, 6, 4]));
        let hand = (5.0 * 1.0 + 2.0 * 0.5 + 3.0 * 1.0 + 2.0 * 4.0 + 4.0 * 4.0) / 1e6;
        assert!((cost - hand).abs() < 1e-15);
    }

    #[test]
    fn parts_larger_than_the_whole_price_the_parts_and_never_go_negative() {
        let p = price("input = 1.0\ncached_input = 0.5\noutput = 4.0");
        let cost = p.cost(&TokenCounts([1, 5, 0, 0, 3]));
        assert!((cost - (5.0 * 0.5 + 3.0 * 4.0) / 1e6).abs() < 1e-15);
    }
}
