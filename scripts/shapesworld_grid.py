"""Draw the README's ShapesWorld figure: scenes with their three captions.

    python scripts/shapesworld_grid.py [OUT.png]
"""
import sys

from matplotlib.figure import Figure  # no pyplot, no backend switch

from reference_impl.data.shapes import WorldConfig, render, sample_scene


def main(out: str = "docs/figures/shapesworld_grid.png") -> None:
    world = WorldConfig(seed=0, unsafe_fraction=0.15, brand_fraction=0.2, hq_fraction=0.5)
    scenes = [sample_scene(world, i) for i in range(12)]
    images = render(scenes, 64).permute(0, 2, 3, 1).numpy()
    fig = Figure(figsize=(13, 14))
    axes = fig.subplots(3, 4)
    for ax, s, img in zip(axes.flat, scenes, images):
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        filename, alt, rich = s["captions"]
        rich = rich.replace(" on a", "\non a").replace(" in the", "\nin the").replace(" with", "\nwith")
        ax.set_title(f"file: {filename}\nalt: {alt}\nrich: {rich}\naesthetic {s['aesthetic']:.1f}",
                     fontsize=8, loc="left")
    fig.suptitle("ShapesWorld: scene i of a world seed, its three captions and its aesthetic score",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=2.5)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
