"""Temporary stand-in (crop, flip, brightness/contrast) until the batched engine lands."""
import torch, torch.nn.functional as F
class SimCLRAugment:
    def __init__(self, size=None, crop_scale=(0.2, 1.0), crop_ratio=(3/4, 4/3), flip_p=0.5,
                 color_strength=0.5, color_p=0.8, gray_p=0.2, blur_p=0.0, blur_sigma=(0.1, 2.0),
                 solarize_p=0.0):
        self.size, self.scale, self.ratio, self.flip_p, self.s, self.color_p = size, crop_scale, crop_ratio, flip_p, color_strength, color_p
    def __call__(self, x, generator):
        n, c, h, w = x.shape; g = generator; dev = x.device
        size = self.size or h
        area = torch.empty(n, device=dev).uniform_(*self.scale, generator=g)
        logr = torch.empty(n, device=dev).uniform_(torch.tensor(self.ratio).log()[0].item(), torch.tensor(self.ratio).log()[1].item(), generator=g)
        r = logr.exp(); cw = (area * r).sqrt().clamp(max=1); ch = (area / r).sqrt().clamp(max=1)
        cx = (torch.rand(n, device=dev, generator=g) * 2 - 1) * (1 - cw); cy = (torch.rand(n, device=dev, generator=g) * 2 - 1) * (1 - ch)
        flip = torch.where(torch.rand(n, device=dev, generator=g) < self.flip_p, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=dev); theta[:, 0, 0] = cw * flip; theta[:, 0, 2] = cx; theta[:, 1, 1] = ch; theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, (n, c, size, size), align_corners=False)
        out = F.grid_sample(x.float() / 255, grid, align_corners=False)
        apply = (torch.rand(n, 1, 1, 1, device=dev, generator=g) < self.color_p).float()
        b = 1 + (torch.rand(n, 1, 1, 1, device=dev, generator=g) * 2 - 1) * 0.8 * self.s
        k = 1 + (torch.rand(n, 1, 1, 1, device=dev, generator=g) * 2 - 1) * 0.8 * self.s
        j = (out * b).clamp(0, 1); m = j.mean((1, 2, 3), keepdim=True); j = ((j - m) * k + m).clamp(0, 1)
        return apply * j + (1 - apply) * out
    def two_views(self, x, generator):
        return self(x, generator), self(x, generator)
