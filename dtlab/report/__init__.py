"""Results a paper can use: headline tables (tables), run-to-run comparison (compare), the HTML report page (page)."""
