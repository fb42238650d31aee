//! SAM 2's image encoder: the Hiera trunk and the FPN neck.
//! Follows `sam2/modeling/backbones/hieradet.py` (Hiera, MultiScaleBlock,
//! MultiScaleAttention), `backbones/image_encoder.py` (ImageEncoder with `scalp=1`, FpnNeck)
//! and the image path of `sam2_base.py` / `sam2_image_predictor.py` (`forward_image`'s
//! `conv_s0`/`conv_s1`, `set_image`'s `no_mem_embed`), keys as in the official checkpoints'
//! `model` under `image_encoder.`.
//!
//! Differences in form, not in result:
//! - the trunk runs on tokens `[B, H*W, C]`, the reference's `[B, H, W, C]` row-major;
//! - the position embedding (`_get_pos_embed`: the bicubic resize of `pos_embed` plus the tiled
//!   `pos_embed_window`) depends on the weights alone and is computed once at load;
//! - the 2x2 max pools are the elementwise maximum of four strided views;
//! - the neck's 1x1 convs (and `conv_s0`, `conv_s1`) run as linear layers on the tokens;
//!   `no_mem_embed`, added to every token of the lowest-resolution map, is a bias there;
//! - the position encodings the neck also computes (`PositionEmbeddingSine`) are not: the image
//!   predictor drops them (video's memory attention reads them).

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::backend::{load, Activation, Backend, ConvOpts, Param};
use crate::model::common::{to_nchw, LayerNorm, Linear, MLPBlock, PatchEmbed};
use crate::model::config::EMBED_DIM;
use crate::model::weights::WeightPath;

/// `nn.LayerNorm`'s eps in the blocks (`MultiScaleBlock`'s `norm_layer`).
const LAYER_NORM_EPS: f64 = 1e-6;
/// The patch embedding: `Conv2d(3, C, kernel 7, stride 4, padding 3)`.
const PATCH_KERNEL: usize = 7;
const PATCH_STRIDE: usize = 4;
const PATCH_PADDING: usize = 3;
/// Side of the input frame: the trunk's tokens are a `1024 / 4` grid.
const IMAGE_SIZE: usize = 1024;
/// The stages: Hiera's `stages`, `window_spec` and the FPN's levels come in fours.
const STAGES: usize = 4;
/// `q_pool` (3): the first block of each stage after the first pools its queries 2x2.
const Q_STRIDE: usize = 2;
/// The most values an intermediate of a block holds: larger ones are computed in slices (of
/// windows, or of tokens) and joined. WebGPU's default limit on a buffer a kernel binds is
/// 128 MiB, and whole, the q-pool blocks' qkv at 256x256 tokens take 144 MiB (Hiera-T) to
/// 216 MiB (Hiera-L), Hiera-L's first MLP 144 MiB; on the CPU the slices keep the peak lower.
const MAX_VALUES: usize = 1 << 24;
/// Channels of the decoder's high-resolution inputs: `conv_s0` (256x256) and `conv_s1`
/// (128x128).
const HIGH_RES_CHANNELS: [usize; 2] = [EMBED_DIM / 8, EMBED_DIM / 4];

/// The structure of a Hiera trunk. A checkpoint holds the widths and the stages' depths but not
/// the heads, windows or global blocks: [`HieraConfig::detect`] matches its shapes against the
/// four SAM 2.1 configurations; a safetensors file of another trunk can name its configuration
/// in its metadata ([`HieraConfig::METADATA_KEY`], [`HieraConfig::of`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HieraConfig {
    /// The name of an official configuration (`tiny`, `small`, `base_plus`, `large`), or of
    /// the configuration a caller built.
    pub name: String,
    /// Channels of the first stage (doubled at each stage).
    pub embed_dim: usize,
    /// Heads of the first stage (doubled at each stage).
    pub num_heads: usize,
    /// Blocks per stage.
    pub stages: [usize; STAGES],
    /// The blocks that attend over the whole grid.
    pub global_att_blocks: Vec<usize>,
    /// The attention window of each stage (a stage's first block uses the previous stage's).
    pub window_spec: [usize; STAGES],
    /// `window_pos_embed_bkg_spatial_size`: the side of `pos_embed` `[1, C, s, s]`.
    pub pos_embed_size: usize,
}

impl HieraConfig {
    /// The safetensors `__metadata__` key under which a checkpoint may hold its trunk's
    /// configuration, as this struct's JSON.
    pub const METADATA_KEY: &'static str = "websam.hiera";

    /// The trunk of `weights`: the configuration its metadata names (checked against its
    /// shapes), else the official one its shapes are ([`Self::detect`]).
    pub fn of(weights: &crate::model::weights::Weights) -> Result<Self> {
        let shape_of = |k: &str| weights.shape_of(&format!("image_encoder.trunk.{k}"));
        let Some(json) = weights.metadata(Self::METADATA_KEY) else {
            return Self::detect(&shape_of);
        };
        let cfg: Self = serde_json::from_str(json).map_err(|e| {
            Error::UnsupportedModel(format!("SAM 2: the metadata's {}: {e}", Self::METADATA_KEY))
        })?;
        cfg.check()?;
        let shapes = TrunkShapes::read(&shape_of)?;
        if !shapes.fit(&cfg) {
            return Err(Error::UnsupportedModel(format!(
                "SAM 2: the metadata's trunk ({cfg:?}) is not the checkpoint's ({})",
                shapes.describe()
            )));
        }
        Ok(cfg)
    }

    fn official(
        name: &str,
        embed_dim: usize,
        num_heads: usize,
        stages: [usize; STAGES],
        global_att_blocks: &[usize],
        window_spec: [usize; STAGES],
        pos_embed_size: usize,
    ) -> Self {
        Self {
            name: name.into(),
            embed_dim,
            num_heads,
            stages,
            global_att_blocks: global_att_blocks.to_vec(),
            window_spec,
            pos_embed_size,
        }
    }

    /// `sam2.1_hiera_t.yaml`.
    pub fn tiny() -> Self {
        Self::official("tiny", 96, 1, [1, 2, 7, 2], &[5, 7, 9], [8, 4, 14, 7], 7)
    }

    /// `sam2.1_hiera_s.yaml`.
    pub fn small() -> Self {
        Self::official(
            "small",
            96,
            1,
            [1, 2, 11, 2],
            &[7, 10, 13],
            [8, 4, 14, 7],
            7,
        )
    }

    /// `sam2.1_hiera_b+.yaml` (Hiera's defaults but the width and heads).
    pub fn base_plus() -> Self {
        Self::official(
            "base_plus",
            112,
            2,
            [2, 3, 16, 3],
            &[12, 16, 20],
            [8, 4, 14, 7],
            14,
        )
    }

    /// `sam2.1_hiera_l.yaml`.
    pub fn large() -> Self {
        Self::official(
            "large",
            144,
            2,
            [2, 6, 36, 4],
            &[23, 33, 43],
            [8, 4, 16, 8],
            7,
        )
    }

    /// The four official configurations.
    pub fn official_configs() -> [Self; 4] {
        [
            Self::tiny(),
            Self::small(),
            Self::base_plus(),
            Self::large(),
        ]
    }

    /// Reads the trunk's width, stages and position-embedding size from a checkpoint (keys
    /// under `image_encoder.trunk.`, through `shape_of`) and returns the official
    /// configuration they are: a trunk of any other structure is an error that says what it
    /// has.
    pub fn detect(shape_of: &dyn Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let shapes = TrunkShapes::read(shape_of)?;
        if shapes.stages().is_none() {
            return Err(Error::UnsupportedModel(format!(
                "SAM 2: not a four-stage Hiera trunk ({})",
                shapes.describe()
            )));
        }
        Self::official_configs()
            .into_iter()
            .find(|c| shapes.fit(c))
            .ok_or_else(|| {
                Error::UnsupportedModel(format!(
                    "SAM 2: a Hiera trunk that is none of SAM 2.1's tiny, small, base+ and large \
                     ({}); its heads, windows and global blocks are not in the checkpoint",
                    shapes.describe()
                ))
            })
    }

    /// Blocks in all.
    pub fn depth(&self) -> usize {
        self.stages.iter().sum()
    }

    /// The last block of each stage.
    pub fn stage_ends(&self) -> [usize; STAGES] {
        let mut ends = [0; STAGES];
        let mut sum = 0;
        for (end, n) in ends.iter_mut().zip(self.stages) {
            sum += n;
            *end = sum - 1;
        }
        ends
    }

    /// Each stage's channels: `[C, 2C, 4C, 8C]`.
    pub fn channels(&self) -> [usize; STAGES] {
        std::array::from_fn(|i| self.embed_dim << i)
    }

    fn check(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::UnsupportedModel(format!("Hiera {self:?}: {why}")));
        if self.stages.contains(&0)
            || self.num_heads == 0
            || !self.embed_dim.is_multiple_of(self.num_heads)
        {
            return bad("empty stages or a width not a multiple of the heads");
        }
        if self.global_att_blocks.iter().any(|&i| i >= self.depth()) {
            return bad("a global block past the last block");
        }
        // A stage's first block pools its queries in the previous stage's windows.
        let pooled = &self.window_spec[..STAGES - 1];
        if self.pos_embed_size == 0
            || self.window_spec.contains(&0)
            || pooled.iter().any(|w| w % 2 != 0)
        {
            return bad("windows must be positive, and even where queries are pooled 2x2");
        }
        if !(IMAGE_SIZE / PATCH_STRIDE).is_multiple_of(self.window_spec[0]) {
            return bad("the first window must tile the 256x256 grid (pos_embed_window)");
        }
        Ok(())
    }
}

/// What a checkpoint's trunk shows of its structure (keys under `image_encoder.trunk.`).
struct TrunkShapes {
    embed_dim: usize,
    depth: usize,
    /// The blocks that change the width (a `proj`): they start the stages after the first.
    starts: Vec<usize>,
    pos_embed: Vec<usize>,
}

impl TrunkShapes {
    fn read(shape_of: &dyn Fn(&str) -> Option<Vec<usize>>) -> Result<Self> {
        let patch = shape_of("patch_embed.proj.weight").ok_or_else(|| {
            Error::UnsupportedModel("SAM 2: no image_encoder.trunk.patch_embed.proj.weight".into())
        })?;
        let embed_dim = match patch.as_slice() {
            &[c, 3, PATCH_KERNEL, PATCH_KERNEL] => c,
            other => {
                return Err(Error::UnsupportedModel(format!(
                    "SAM 2: a patch embedding of shape {other:?}, expected [C, 3, 7, 7]"
                )))
            }
        };
        let depth = (0..)
            .take_while(|i| shape_of(&format!("blocks.{i}.norm1.weight")).is_some())
            .count();
        Ok(Self {
            embed_dim,
            depth,
            starts: (0..depth)
                .filter(|i| shape_of(&format!("blocks.{i}.proj.weight")).is_some())
                .collect(),
            pos_embed: shape_of("pos_embed").unwrap_or_default(),
        })
    }

    /// Blocks per stage, when the widths change where four stages would.
    fn stages(&self) -> Option<[usize; STAGES]> {
        match self.starts.as_slice() {
            &[a, b, c] if 0 < a && a < b && b < c && c < self.depth => {
                Some([a, b - a, c - b, self.depth - c])
            }
            _ => None,
        }
    }

    /// Whether these are the shapes of a trunk of `cfg`.
    fn fit(&self, cfg: &HieraConfig) -> bool {
        let p = cfg.pos_embed_size;
        self.embed_dim == cfg.embed_dim
            && self.stages() == Some(cfg.stages)
            && self.pos_embed == [1, cfg.embed_dim, p, p]
    }

    fn describe(&self) -> String {
        format!(
            "embed dim {}, {} blocks, width changes at blocks {:?}, pos_embed {:?}",
            self.embed_dim, self.depth, self.starts, self.pos_embed
        )
    }
}

/// `do_pool` with `MaxPool2d(2, 2)`: tokens `[B, h*w, C]` of an `(h, w)` grid ->
/// `[B, (h/2)*(w/2), C]` (floor mode: an odd last row or column is dropped).
fn max_pool_2x2<B: Backend>(b: &mut B, x: &B::Tensor, (h, w): (usize, usize)) -> Result<B::Tensor> {
    let &[n, l, c] = B::dims(x) else {
        return Err(Error::invalid(format!("max pool of {:?}", B::dims(x))));
    };
    if l != h * w || h < 2 || w < 2 {
        return Err(Error::invalid(format!(
            "max pool of {l} tokens as a {h}x{w} grid"
        )));
    }
    let (ho, wo) = (h / 2, w / 2);
    let mut x = x.clone();
    if h % 2 != 0 || w % 2 != 0 {
        x = b.reshape(&x, &[n, h, w, c])?;
        x = b.slice(&x, 1, 0, 2 * ho)?;
        x = b.slice(&x, 2, 0, 2 * wo)?;
    }
    // Rows in pairs, and each pair of columns side by side in the channels.
    let x = b.reshape(&x, &[n * ho, 2, wo, 2 * c])?;
    let top = b.slice(&x, 1, 0, 1)?;
    let bottom = b.slice(&x, 1, 1, 1)?;
    let rows = b.maximum(&top, &bottom)?;
    let left = b.slice(&rows, 3, 0, c)?;
    let right = b.slice(&rows, 3, c, c)?;
    let m = b.maximum(&left, &right)?;
    b.reshape(&m, &[n, ho * wo, c])
}

/// `MultiScaleAttention`: `qkv`, the queries max-pooled 2x2 in q-pool blocks (keys and values
/// are not), attention in `heads` heads, `proj`.
#[derive(Debug, Clone)]
struct MultiScaleAttention<B: Backend> {
    heads: usize,
    dim_out: usize,
    q_pool: bool,
    scale: f32,
    qkv: Linear<B>,
    proj: Linear<B>,
}

impl<B: Backend> MultiScaleAttention<B> {
    fn new(
        dev: &B::Device,
        vb: &WeightPath,
        dim: usize,
        dim_out: usize,
        heads: usize,
        q_pool: bool,
    ) -> Result<Self> {
        Ok(Self {
            heads,
            dim_out,
            q_pool,
            scale: ((dim_out / heads) as f64).powf(-0.5) as f32,
            qkv: Linear::new(dev, &vb.pp("qkv"), dim, 3 * dim_out, true)?,
            proj: Linear::new(dev, &vb.pp("proj"), dim_out, dim_out, true)?,
        })
    }

    /// `x`: `[B, h*w, C]`, B windows (or the whole grid) of `grid`.
    fn forward(&self, b: &mut B, x: &B::Tensor, grid: (usize, usize)) -> Result<B::Tensor> {
        let d = self.dim_out;
        // The last dim of qkv is [q | k | v], each head-major.
        let qkv = self.qkv.forward(b, x, Activation::None)?;
        let mut q = b.slice(&qkv, 2, 0, d)?;
        let k = b.slice(&qkv, 2, d, d)?;
        let v = b.slice(&qkv, 2, 2 * d, d)?;
        if self.q_pool {
            q = max_pool_2x2(b, &q, grid)?;
        }
        let o = b.multi_head_attention(&q, &k, &v, self.heads, self.scale)?;
        self.proj.forward(b, &o, Activation::None)
    }
}

/// `MultiScaleBlock`.
#[derive(Debug, Clone)]
struct MultiScaleBlock<B: Backend> {
    /// 0 for a global block.
    window_size: usize,
    norm1: LayerNorm<B>,
    /// Where the width changes (the q-pool blocks): the shortcut's projection, pooled.
    proj: Option<Linear<B>>,
    attn: MultiScaleAttention<B>,
    norm2: LayerNorm<B>,
    mlp: MLPBlock<B>,
}

impl<B: Backend> MultiScaleBlock<B> {
    /// `x`: tokens `[1, h*w, dim]` of `grid` -> tokens `[1, h'*w', dim_out]` of the grid this
    /// returns (halved in q-pool blocks).
    fn forward(
        &self,
        b: &mut B,
        x: &B::Tensor,
        grid: (usize, usize),
    ) -> Result<(B::Tensor, (usize, usize))> {
        let xn = self.norm1.forward(b, x)?;
        let pooled = self.attn.q_pool;
        let out_grid = if pooled {
            (grid.0 / Q_STRIDE, grid.1 / Q_STRIDE)
        } else {
            grid
        };
        // The shortcut is taken from the normalised x where the width changes.
        let shortcut = match &self.proj {
            Some(proj) => {
                let s = proj.forward(b, &xn, Activation::None)?;
                if pooled {
                    max_pool_2x2(b, &s, grid)?
                } else {
                    s
                }
            }
            None => x.clone(),
        };
        let ws = self.window_size;
        let width = 4 * self.attn.dim_out; // qkv's 3 and the MLP's 4 times the width
        let x = if ws > 0 {
            // Windows zero-padded at the bottom and right (after the norm); padded tokens
            // take part in the attention, as in the reference.
            let windows = b.window_partition(&xn, grid, ws)?;
            let a = in_slices(b, &windows, 0, ws * ws * width, |b, w| {
                self.attn.forward(b, w, (ws, ws))
            })?;
            let out_ws = if pooled { ws / Q_STRIDE } else { ws };
            b.window_reverse(&a, out_grid, out_ws, Some(&shortcut))?
        } else {
            let a = self.attn.forward(b, &xn, grid)?;
            b.add(&shortcut, &a)?
        };
        let m = in_slices(b, &x, 1, width, |b, t| {
            let m = self.norm2.forward(b, t)?;
            self.mlp.forward(b, &m)
        })?;
        Ok((b.add(&x, &m)?, out_grid))
    }
}

/// `f` over `x` in slices along `dim`, joined: whole when its intermediates of `per_item`
/// values for each index of `dim` stay under [`MAX_VALUES`], else in as many equal slices as
/// keep them there.
fn in_slices<B: Backend>(
    b: &mut B,
    x: &B::Tensor,
    dim: usize,
    per_item: usize,
    f: impl Fn(&mut B, &B::Tensor) -> Result<B::Tensor>,
) -> Result<B::Tensor> {
    let dims = B::dims(x);
    let n = dims[dim];
    let batch: usize = dims[..dim].iter().product();
    let per = per_item.max(1) * batch.max(1);
    if n * per <= MAX_VALUES {
        return f(b, x);
    }
    let pieces = (n * per).div_ceil(MAX_VALUES);
    let len = n.div_ceil(pieces);
    let mut outs = Vec::with_capacity(pieces);
    for start in (0..n).step_by(len) {
        let part = b.slice(x, dim, start, len.min(n - start))?;
        outs.push(f(b, &part)?);
    }
    let refs: Vec<&B::Tensor> = outs.iter().collect();
    b.concat(&refs, dim)
}

/// What SAM 2's image encoder gives the decoder for one image (`SAM2ImagePredictor`'s
/// `_features`): `image_embed` `[1, 256, 64, 64]` (`no_mem_embed` added), `high_res_feats`
/// after `conv_s0` `[1, 32, 256, 256]` and `conv_s1` `[1, 64, 128, 128]`.
#[derive(Debug, Clone)]
pub struct Sam2Features<T> {
    pub image_embed: T,
    pub high_res_0: T,
    pub high_res_1: T,
}

/// SAM 2's image encoder with the decoder's two high-resolution convs: the image
/// `[1, 3, 1024, 1024]` (resized and normalised) -> [`Sam2Features`].
#[derive(Debug, Clone)]
pub struct Sam2ImageEncoder<B: Backend> {
    cfg: HieraConfig,
    patch_embed: PatchEmbed<B>,
    /// `_get_pos_embed` for the 256x256 grid, as tokens `[1, 256*256, C]`.
    pos_embed: B::Tensor,
    blocks: Vec<MultiScaleBlock<B>>,
    /// `neck.convs.{0..3}.conv` as linear layers, `convs[0]` on the deepest stage.
    lateral: Vec<Linear<B>>,
    /// `no_mem_embed` `[1, 1, 256]` as an NCHW bias `[1, 256, 1, 1]`.
    no_mem_embed: B::Tensor,
    /// `sam_mask_decoder.conv_s0` and `conv_s1` as linear layers.
    conv_s0: Linear<B>,
    conv_s1: Linear<B>,
}

/// A 1x1 conv `[out, in, 1, 1]` with bias, as a linear layer.
fn conv_1x1<B: Backend>(
    dev: &B::Device,
    vb: &WeightPath,
    c_in: usize,
    c_out: usize,
) -> Result<Linear<B>> {
    let w = vb
        .get(&[c_out, c_in, 1, 1], "weight")?
        .reshape((c_out, c_in))?;
    Ok(Linear::from_weight_and_bias(
        B::param(dev, &w, Param::Linear)?,
        Some(load::<B>(dev, vb, &[c_out], "bias", Param::Plain)?),
    ))
}

impl<B: Backend> Sam2ImageEncoder<B> {
    /// `vb`: the checkpoint's root (the keys under `image_encoder.`, `no_mem_embed` and
    /// `sam_mask_decoder.conv_s*`).
    pub fn new(dev: &B::Device, cfg: &HieraConfig, vb: &WeightPath) -> Result<Self> {
        cfg.check()?;
        let trunk = vb.pp("image_encoder").pp("trunk");
        let c0 = cfg.embed_dim;
        let pos_embed = position_embedding(
            &trunk.get(
                &[1, c0, cfg.pos_embed_size, cfg.pos_embed_size],
                "pos_embed",
            )?,
            &trunk.get(
                &[1, c0, cfg.window_spec[0], cfg.window_spec[0]],
                "pos_embed_window",
            )?,
            IMAGE_SIZE / PATCH_STRIDE,
        )?;
        let stage_ends = cfg.stage_ends();
        let mut blocks = Vec::with_capacity(cfg.depth());
        let (mut dim, mut heads, mut stage) = (c0, cfg.num_heads, 0usize);
        for i in 0..cfg.depth() {
            // The window lags a block behind the stage: a stage's first block partitions with
            // the previous stage's window.
            let window_size = if cfg.global_att_blocks.contains(&i) {
                0
            } else {
                cfg.window_spec[stage]
            };
            let starts_stage = i > 0 && stage_ends.contains(&(i - 1));
            let mut dim_out = dim;
            if starts_stage {
                dim_out = 2 * dim;
                heads *= 2;
                stage += 1;
            }
            let vb = trunk.pp("blocks").pp(i);
            blocks.push(MultiScaleBlock {
                window_size,
                norm1: LayerNorm::new(dev, &vb.pp("norm1"), dim, LAYER_NORM_EPS)?,
                proj: if dim != dim_out {
                    Some(Linear::new(dev, &vb.pp("proj"), dim, dim_out, true)?)
                } else {
                    None
                },
                attn: MultiScaleAttention::new(
                    dev,
                    &vb.pp("attn"),
                    dim,
                    dim_out,
                    heads,
                    starts_stage,
                )?,
                norm2: LayerNorm::new(dev, &vb.pp("norm2"), dim_out, LAYER_NORM_EPS)?,
                mlp: MLPBlock::with_keys(
                    dev,
                    &vb.pp("mlp"),
                    ["layers.0", "layers.1"],
                    dim_out,
                    4 * dim_out,
                    Activation::Gelu,
                )?,
            });
            dim = dim_out;
        }
        let neck = vb.pp("image_encoder").pp("neck").pp("convs");
        let channels = cfg.channels();
        let lateral = (0..STAGES)
            .map(|k| {
                conv_1x1(
                    dev,
                    &neck.pp(k).pp("conv"),
                    channels[STAGES - 1 - k],
                    EMBED_DIM,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let no_mem_embed = vb
            .get(&[1, 1, EMBED_DIM], "no_mem_embed")?
            .reshape((1, EMBED_DIM, 1, 1))?;
        let decoder = vb.pp("sam_mask_decoder");
        Ok(Self {
            cfg: cfg.clone(),
            patch_embed: PatchEmbed::new(
                dev,
                &trunk.pp("patch_embed"),
                (3, c0),
                PATCH_KERNEL,
                ConvOpts::new(PATCH_STRIDE, PATCH_PADDING),
            )?,
            pos_embed: B::param(dev, &pos_embed, Param::Plain)?,
            blocks,
            lateral,
            no_mem_embed: B::param(dev, &no_mem_embed, Param::Plain)?,
            conv_s0: conv_1x1(dev, &decoder.pp("conv_s0"), EMBED_DIM, HIGH_RES_CHANNELS[0])?,
            conv_s1: conv_1x1(dev, &decoder.pp("conv_s1"), EMBED_DIM, HIGH_RES_CHANNELS[1])?,
        })
    }

    pub fn config(&self) -> &HieraConfig {
        &self.cfg
    }

    /// The image `[1, 3, 1024, 1024]` -> the decoder's three inputs.
    pub fn forward(&self, b: &mut B, x: &B::Tensor) -> Result<Sam2Features<B::Tensor>> {
        if B::dims(x) != [1, 3, IMAGE_SIZE, IMAGE_SIZE] {
            return Err(Error::invalid(format!(
                "SAM 2's image encoder expects [1, 3, {IMAGE_SIZE}, {IMAGE_SIZE}], got {:?}",
                B::dims(x)
            )));
        }
        // Hiera: patch embedding, position embedding, the blocks; each stage's output kept.
        let (x, mut grid) = self.patch_embed.forward(b, x)?;
        let mut x = b.add(&x, &self.pos_embed)?;
        let stage_ends = self.cfg.stage_ends();
        let mut stages = Vec::with_capacity(STAGES);
        for (i, block) in self.blocks.iter().enumerate() {
            let (y, g) = block.forward(b, &x, grid)?;
            (x, grid) = (y, g);
            if stage_ends.contains(&i) {
                stages.push((x.clone(), grid));
            }
        }
        // FpnNeck (top-down on level 2 only, `fpn_top_down_levels: [2, 3]`): level 3 is its
        // lateral, level 2 its lateral plus level 3 upsampled 2x (nearest), levels 1 and 0
        // their laterals. `scalp=1` drops level 3; conv_s0 and conv_s1 then take levels 0, 1.
        let lateral = |b: &mut B, level: usize| -> Result<(B::Tensor, (usize, usize))> {
            let (t, g) = &stages[level];
            Ok((
                self.lateral[STAGES - 1 - level].forward(b, t, Activation::None)?,
                *g,
            ))
        };
        let (top, g3) = lateral(b, 3)?;
        let (embed, g2) = lateral(b, 2)?;
        let embed = to_nchw(b, &embed, g2)?;
        let top = to_nchw(b, &top, g3)?;
        if (2 * g3.0, 2 * g3.1) != g2 {
            return Err(Error::invalid(format!(
                "FPN: a {g3:?} level under a {g2:?} one"
            )));
        }
        // Nearest 2x: each value of the level above over a 2x2 block, by broadcasting.
        let c = EMBED_DIM;
        let up = b.reshape(&embed, &[c * g3.0, 2, g3.1, 2])?;
        let top = b.reshape(&top, &[c * g3.0, 1, g3.1, 1])?;
        let embed = b.add(&up, &top)?;
        let embed = b.reshape(&embed, &[1, c, g2.0, g2.1])?;
        let image_embed = b.add(&embed, &self.no_mem_embed)?;
        let high_res = |b: &mut B, level: usize, conv: &Linear<B>| -> Result<B::Tensor> {
            let (t, g) = lateral(b, level)?;
            let t = conv.forward(b, &t, Activation::None)?;
            to_nchw(b, &t, g)
        };
        Ok(Sam2Features {
            image_embed,
            high_res_1: high_res(b, 1, &self.conv_s1)?,
            high_res_0: high_res(b, 0, &self.conv_s0)?,
        })
    }
}

/// Hiera's `_get_pos_embed` for a `grid x grid` token grid: `pos_embed` `[1, C, s, s]`
/// resized bicubically (`F.interpolate(mode="bicubic")`: `align_corners=False`, A = -0.75,
/// border taps clamped) plus `pos_embed_window` `[1, C, w, w]` tiled, as tokens
/// `[1, grid*grid, C]`.
fn position_embedding(pos_embed: &Tensor, window: &Tensor, grid: usize) -> Result<Tensor> {
    let (_, c, s, s2) = pos_embed.dims4()?;
    let (_, _, w, w2) = window.dims4()?;
    if s != s2 || w != w2 || w == 0 || !grid.is_multiple_of(w) {
        return Err(Error::invalid(format!(
            "pos_embed {:?} and pos_embed_window {:?} for a {grid}x{grid} grid",
            pos_embed.dims(),
            window.dims()
        )));
    }
    let src: Vec<f32> = pos_embed.flatten_all()?.to_vec1()?;
    let win: Vec<f32> = window.flatten_all()?.to_vec1()?;
    let taps = bicubic_taps(s, grid);
    // Tokens (y, x) row-major, channels last.
    let mut out = vec![0f32; grid * grid * c];
    for (y, (ty, wy)) in taps.iter().enumerate() {
        for (x, (tx, wx)) in taps.iter().enumerate() {
            let token = &mut out[(y * grid + x) * c..(y * grid + x + 1) * c];
            for (ch, v) in token.iter_mut().enumerate() {
                let plane = &src[ch * s * s..(ch + 1) * s * s];
                let mut acc = 0f32;
                for (iy, fy) in ty.iter().zip(wy) {
                    let mut row = 0f32;
                    for (ix, fx) in tx.iter().zip(wx) {
                        row += fx * plane[iy * s + ix];
                    }
                    acc += fy * row;
                }
                *v = acc + win[ch * w * w + (y % w) * w + x % w];
            }
        }
    }
    Ok(Tensor::from_vec(out, (1, grid * grid, c), &Device::Cpu)?)
}

/// For each output index of a bicubic resize from `n_in` to `n_out` (`align_corners=False`):
/// the four input indices (clamped to the border) and their weights, as PyTorch computes them
/// (`area_pixel_compute_source_index` with `cubic=true`, `get_cubic_upsample_coefficients`).
#[allow(clippy::type_complexity)]
fn bicubic_taps(n_in: usize, n_out: usize) -> Vec<([usize; 4], [f32; 4])> {
    const A: f32 = -0.75;
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let i0 = real.floor();
            let t = real - i0;
            let cc1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
            let cc2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
            let t2 = 1.0 - t;
            let weights = [cc2(t + 1.0), cc1(t), cc1(t2), cc2(t2 + 1.0)];
            let idx = std::array::from_fn(|j| {
                (i0 as isize - 1 + j as isize).clamp(0, n_in as isize - 1) as usize
            });
            (idx, weights)
        })
        .collect()
}
