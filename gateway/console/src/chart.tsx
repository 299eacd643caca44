// A horizontal bar chart in plain SVG: enough for cost and token breakdowns without a chart
// library (each bar carries its value as text, so it reads without colour or hover).
export interface Bar {
  label: string;
  value: number;
  text: string;
}

export function BarChart({ bars, title }: { bars: Bar[]; title: string }) {
  const max = Math.max(...bars.map((b) => b.value), 0);
  const row = 26;
  const height = bars.length * row + 8;
  return (
    <figure className="chart">
      <figcaption>{title}</figcaption>
      <svg
        role="img"
        aria-label={title}
        viewBox={`0 0 600 ${height}`}
        width="100%"
        preserveAspectRatio="xMinYMin meet"
      >
        {bars.map((b, i) => {
          const w = max > 0 ? (b.value / max) * 330 : 0;
          const y = i * row + 4;
          return (
            <g key={b.label}>
              <text x="0" y={y + 16} className="chart-label">
                {b.label.length > 24 ? `${b.label.slice(0, 23)}…` : b.label}
              </text>
              <rect
                x="170"
                y={y}
                width={Math.max(w, 1)}
                height={row - 8}
                rx="3"
                className="chart-bar"
              />
              <text x={176 + w} y={y + 16} className="chart-value">
                {b.text}
              </text>
            </g>
          );
        })}
      </svg>
    </figure>
  );
}
